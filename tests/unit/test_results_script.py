import pytest


@pytest.fixture
def m(load_script):
    return load_script("scripts/make_results_tables.py")


def test_splice_replaces_only_the_results_block(m):
    doc = "intro\n<!-- results:start -->\nold table\n<!-- results:end -->\noutro\n"
    out = m.splice(doc, "| new |\n")
    assert out == "intro\n<!-- results:start -->\n| new |\n<!-- results:end -->\noutro\n"
    assert m.splice(out, "| new |\n") == out


def test_splice_requires_the_markers(m):
    with pytest.raises(SystemExit, match="needs the lines"):
        m.splice("no markers here", "x")

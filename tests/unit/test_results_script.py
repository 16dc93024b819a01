import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_results_tables.py"


def _module():
    spec = importlib.util.spec_from_file_location("make_results_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_splice_replaces_only_the_results_block():
    m = _module()
    doc = "intro\n<!-- results:start -->\nold table\n<!-- results:end -->\noutro\n"
    out = m.splice(doc, "| new |\n")
    assert out == "intro\n<!-- results:start -->\n| new |\n<!-- results:end -->\noutro\n"
    assert m.splice(out, "| new |\n") == out


def test_splice_requires_the_markers():
    with pytest.raises(SystemExit, match="needs the lines"):
        _module().splice("no markers here", "x")

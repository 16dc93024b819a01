"""The embedding cache's key: what enters it and what does not."""

from __future__ import annotations

from skebrm.experiments.data import _extraction_source_sha, code_fingerprint

CODE = '''"""A module."""

X = 1
"""The X."""


def f(a):
    """Return a + X."""
    # a comment
    return a + X


class C:
    """A class."""

    def g(self):
        """Nothing."""
        return 2
'''


def test_docstrings_comments_and_layout_do_not_change_the_code_fingerprint():
    edited = (
        CODE.replace('"""Return a + X."""', '"""Add ``X`` to ``a``.\n\n    Returns\n    -------\n    int\n    """')
        .replace("# a comment", "# another comment\n\n")
        .replace('"""The X."""', '"""The X, documented at length."""')
        .replace('"""A module."""\n', "")
    )  # fmt: skip
    assert code_fingerprint(edited) == code_fingerprint(CODE)


def test_any_change_to_the_code_changes_the_code_fingerprint():
    base = code_fingerprint(CODE)
    for old, new in (
        ("return a + X", "return a - X"),
        ("X = 1", "X = 2"),
        ("return 2", "return '2'"),
        ("def g(self):", "def h(self):"),
    ):
        changed = CODE.replace(old, new)
        assert changed != CODE
        assert code_fingerprint(changed) != base, (old, new)


def test_the_extraction_source_key_is_a_digest():
    key = _extraction_source_sha()
    assert len(key) == 64 and int(key, 16) >= 0

import subprocess
import sys

import skebrm


def test_public_names_resolve():
    for name in skebrm.__all__:
        assert getattr(skebrm, name) is not None, name
    assert set(skebrm.__all__) <= set(dir(skebrm))


def test_import_does_not_pull_in_transformers():
    code = "import sys, skebrm; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_raises():
    import pytest

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        skebrm.nope  # noqa: B018

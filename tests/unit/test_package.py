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


def test_wheel_ships_every_conf_folder_and_package():
    """pyproject lists packages explicitly (conf/ is mapped to skebrm.conf): keep it in sync."""
    from pathlib import Path

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    assert cfg["package-dir"] == {"skebrm.conf": "conf"}
    conf = {
        "skebrm.conf" + "".join("." + p for p in d.relative_to(root / "conf").parts)
        for d in [root / "conf", *(root / "conf").rglob("*")]
        if d.is_dir() and any(d.glob("*.yaml"))
    }
    code = {
        ".".join(d.relative_to(root).parts)
        for d in [root / "skebrm", *(root / "skebrm").rglob("*")]
        if d.is_dir() and (d / "__init__.py").exists()
    }
    assert conf <= listed, conf - listed
    assert code <= listed, code - listed

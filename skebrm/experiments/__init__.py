"""Hydra experiments: the default main job, the RMB, label-noise and cross-model studies.

Run ``skebrm-experiment`` (or ``python -m skebrm.experiments.main``) for the default main
job; ``skebrm-experiment experiment=rmb_study -m`` for a study. The config tree is the
top-level ``conf/`` folder of the repository (see :func:`conf_dir`); set
``SKEBRM_CONF_DIR`` to use another one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["conf_dir", "data_dir", "register_resolvers"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def conf_dir() -> Path:
    """The Hydra config folder: ``$SKEBRM_CONF_DIR``, else ``conf/`` of the source checkout.

    The checkout's ``conf/`` is found next to the ``skebrm`` package, which is where it is
    in an editable install (``pip install -e .``) and when running from the repository; a
    wheel ships the same tree as ``skebrm/conf``.
    """
    env = os.environ.get("SKEBRM_CONF_DIR")
    packaged = Path(__file__).resolve().parents[1] / "conf"  # skebrm/conf in a wheel
    candidates = [Path(env)] if env else [_REPO_ROOT / "conf", packaged, Path.cwd() / "conf"]
    for path in candidates:
        if (path / "config.yaml").is_file():
            return path.resolve()
    raise FileNotFoundError(
        "skebrm experiments: no Hydra config tree found (looked for config.yaml in "
        f"{[str(c) for c in candidates]}); install skebrm from a source checkout with "
        "`pip install -e .`, or set SKEBRM_CONF_DIR to a folder holding the conf/ tree."
    )


def data_dir() -> str:
    """Where the preference files of the studies live: ``$SKEBRM_DATA_DIR``, else ``data/``
    at the top of the source checkout (see the user guide's page on studies for the sets,
    their sources and licences)."""
    return os.environ.get("SKEBRM_DATA_DIR", str(_REPO_ROOT / "data"))


def cache_dir() -> str:
    """Embedding cache: ``$SKEBRM_CACHE_DIR`` or ``~/.cache/skebrm``."""
    return os.environ.get("SKEBRM_CACHE_DIR", str(Path.home() / ".cache" / "skebrm"))


def register_resolvers() -> None:
    """Register the ``skebrm_data_dir`` and ``skebrm_cache_dir`` OmegaConf resolvers."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("skebrm_data_dir", data_dir, replace=True)
    OmegaConf.register_new_resolver("skebrm_cache_dir", cache_dir, replace=True)

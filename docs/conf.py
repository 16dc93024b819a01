"""Sphinx configuration of the skebrm documentation.

Build: ``pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html``.
The API pages list every name in the ``__all__`` of the documented modules; they are
written to ``docs/api/`` (one page per module) at the start of every build, so a new
public name gets its page without editing this folder.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import skebrm

HERE = Path(__file__).resolve().parent

project = "skebrm"
author = "skebrm developers"
copyright = "2026, skebrm developers"
release = skebrm.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinx_copybutton",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "runs", "auto_examples/*.ipynb", "auto_examples/*.py"]
nitpicky = False

# --- markdown -------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# --- API pages -------------------------------------------------------------------
autosummary_generate = True
templates_path = ["_templates"]
autosummary_imported_members = True
autodoc_typehints = "none"

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc validation of the public docstrings ("all" then the checks not enforced).
# Style choices the docstrings do not follow: GL01, GL02 (quote placement), SS03, SS05,
# SS06 (summary punctuation and length), PR08 (capitalised descriptions), RT02, PR02, YD01;
# sections not required everywhere: GL08, SA01, EX01, ES01.
numpydoc_validation_checks = {
    "all",
    *("GL01", "GL02", "SS03", "SS05", "SS06", "PR08", "RT02", "PR02", "YD01"),
    *("GL08", "SA01", "EX01", "ES01"),
}
numpydoc_validation_exclude = {
    r"\.__init__$",
    r"\._[a-z]",
}

# The modules whose public names (their __all__) get an API page, in this order.
API_MODULES = [
    ("skebrm", "The estimator, its distribution, the reward heads and the bundle."),
    ("skebrm.metrics", "Pairwise accuracy, uncertainty, calibration and best-of-n metrics."),
    ("skebrm.extraction", "Embeddings and rewards of a Hugging Face reward model, cached."),
    ("skebrm.datasets", "The preference schema, the bundled HH-RLHF sample, splits."),
    ("skebrm.sampling", "Policy samplers and their sample cache."),
    ("skebrm.serving", "The OpenRLHF-compatible reward server (skebrm-serve)."),
    ("skebrm.debias", "Length debiasing of rewards."),
    ("skebrm.selection", "Pair selection with guarantees."),
    ("skebrm.ood", "Out-of-distribution flags."),
    ("skebrm.steps", "Choosing the refinement step to serve."),
    ("skebrm.integrations.trl", "TRL's reward-function convention."),
]


def _home(module: str, name: str) -> str:
    """The documented module that holds ``name`` (a top-level re-export of a documented
    submodule is documented there, once)."""
    if module != "skebrm":
        return module
    lazy = getattr(skebrm, "_LAZY", {})
    origin = lazy.get(name) or getattr(getattr(skebrm, name), "__module__", "skebrm")
    listed = {m for m, _ in API_MODULES if m != "skebrm"}
    return origin if origin in listed else "skebrm"


def write_api_pages() -> None:
    out = HERE / "api"
    out.mkdir(exist_ok=True)
    for order, (module, blurb) in enumerate(API_MODULES):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        names = sorted(n for n in getattr(mod, "__all__", []) if not n.startswith("_"))
        own = [n for n in names if _home(module, n) == module]
        elsewhere = [n for n in names if n not in own]
        lines = [f"``{module}``", "=" * (len(module) + 4), "", blurb, ""]
        lines += [
            f".. currentmodule:: {module}",
            "",
            ".. autosummary::",
            "   :toctree: generated/",
            "",
        ]
        lines += [f"   {n}" for n in own] + [""]
        if elsewhere:
            refs = ", ".join(f":obj:`{_home(module, n)}.{n}`" for n in elsewhere)
            lines += [f"Also importable from ``{module}``: {refs}.", ""]
        text = "\n".join(lines)
        target = out / f"{order:02d}_{module}.rst"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


write_api_pages()

# --- gallery ---------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "show_memory": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

# --- HTML ------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skebrm {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False

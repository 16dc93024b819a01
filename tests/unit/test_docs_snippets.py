"""Every fenced Python block of README.md and docs/ runs, or says why it cannot.

The blocks of one page run in order in one namespace (a later block may use the names
of an earlier one), in a temporary working directory. A block is not run when the line
before its fence is a marker with a reason:

* ``<!-- snippet: not-run, REASON -->``: it needs what the tests cannot have (a GPU, the
  Hugging Face Hub, a dataset that is not bundled) or it is a fragment;
* ``<!-- snippet: tested-by PATH -->``: another test runs it (PATH must name the page);
* ``<!-- snippet: slow, REASON -->``: it runs only with ``-m slow``.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {"_build", "runs", "auto_examples", "generated", "figures"}
FENCE = re.compile(r"^```(python|py)[ \t]*\n(.*?)^```[ \t]*$", flags=re.M | re.S)
MARKER = re.compile(r"<!--\s*snippet:\s*(not-run|tested-by|slow)[,:]?\s*(.*?)\s*-->\s*$", re.S)


def _pages() -> list[Path]:
    pages = [REPO / "README.md"]
    for path in sorted((REPO / "docs").rglob("*.md")):
        if not SKIPPED_DIRS & set(path.relative_to(REPO / "docs").parts[:-1]):
            pages.append(path)
    return pages


def _blocks(page: Path) -> list[tuple[int, str, str | None, str]]:
    """(line, code, marker kind or None, marker reason) of every fenced Python block."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n")
        last = before[before.rfind("<!--") :] if before.endswith("-->") else ""
        marker = MARKER.search(last) if last else None
        line = text.count("\n", 0, match.start()) + 1
        kind, reason = (marker.group(1), marker.group(2)) if marker else (None, "")
        blocks.append((line, match.group(2), kind, reason))
    return blocks


PAGES = [p for p in _pages() if _blocks(p)]


def _ids(pages):
    return [p.relative_to(REPO).as_posix() for p in pages]


def _run(page: Path, kinds: set, tmp_path, monkeypatch) -> float:
    from skebrm import RefinementWarning

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__snippet__"}
    start = time.perf_counter()
    ran = 0
    for line, code, kind, _ in _blocks(page):
        if kind not in kinds:
            continue
        # fit's RefinementWarning is the documented outcome where refinement does not help
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RefinementWarning)
            source = "\n" * (line) + code
            exec(compile(source, str(page.relative_to(REPO)), "exec"), namespace)
        ran += 1
    return time.perf_counter() - start if ran else 0.0


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_block_runs_or_says_why_not(page, tmp_path, monkeypatch):
    for line, _, kind, reason in _blocks(page):
        if kind in ("not-run", "slow"):
            assert len(reason) >= 10, f"{page.name}:{line}: a {kind} marker needs a reason"
        if kind == "tested-by":
            test = REPO / reason
            assert test.is_file(), f"{page.name}:{line}: no test file {reason!r}"
            assert page.name in test.read_text(encoding="utf-8"), (
                f"{page.name}:{line}: {reason} does not read {page.name}"
            )
    _run(page, {None}, tmp_path, monkeypatch)


SLOW_PAGES = [p for p in PAGES if any(k == "slow" for *_, k, _ in _blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES, ids=_ids(SLOW_PAGES))
def test_slow_blocks_run(page, tmp_path, monkeypatch):
    _run(page, {None, "slow"}, tmp_path, monkeypatch)


def test_the_readme_quickstart_is_short_and_covers_the_tour():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    section = readme[readme.index("## Quickstart") :]
    code = FENCE.search(section).group(2)
    assert len(code.strip().splitlines()) <= 25
    for call in (
        ".fit(",
        "return_std=True",
        "predict_distribution(",
        "guard=",
        "fit_guard(",
        "save_pretrained(",
        "from_pretrained(",
    ):
        assert call in code, call


def test_the_docs_name_no_issue_numbers_and_no_paths_outside_the_repository():
    pages = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "docs").rglob("*.rst")]
    pages += [REPO / "docs" / "conf.py", *(REPO / "examples").glob("*.py")]
    for page in pages:
        if SKIPPED_DIRS & set(page.relative_to(REPO).parts[1:-1]) or not page.is_file():
            continue
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(REPO).as_posix()
        assert not re.search(r"\bissues? [0-9]", text, flags=re.I), name
        assert "../shared" not in text, name


def _modules() -> list[str]:
    import pkgutil

    import skebrm

    names = ["skebrm"]
    for info in pkgutil.walk_packages(skebrm.__path__, "skebrm."):
        if ".experiments" not in info.name and not info.name.endswith("__main__"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples_run(module):
    import doctest
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{module}: {exc}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in finder.find(mod, module):
        if test.name.startswith(module):  # not the names it imports from elsewhere
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{module}: {results.failed} docstring example(s) failed"

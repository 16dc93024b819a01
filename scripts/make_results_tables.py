"""Regenerate the results pages' tables and plots from experiment outputs.

Every argument is a run folder (holding ``results.json``) or a multirun sweep folder
(holding one per job). ``--page`` splices the tables into a documentation page, between
its results markers (the page's prose and summary stay as written); ``--output`` writes
them to a file of their own. Figures go to ``docs/figures/``; everything is written
atomically.

A single run gets one row per method (the base margin ``base_margin`` and the Laplace
head ``laplace_bt`` among them), with the misorder AUROC, abstention accuracy and ECE,
plus the annotator-disagreement AUROC and the best-of-k accuracy where the data has
votes or best-of-k groups. A sweep gets one row per job, with the accuracies, then the
misorder and disagreement AUROCs, ECEs and best-of-k accuracies by method (see
:func:`skebrm.experiments.report.summary_table`); runs written before those columns
existed show "–" there. Where the runs carry the base margin, a table of the full-scale
study's targets follows (:func:`skebrm.experiments.report.targets_table`); where a family's runs
vary the share of flipped labels, a label-noise table and plot
(:func:`skebrm.experiments.report.label_noise_table`). Where runs carry the post-hoc
tools, their tables and targets follow
(:func:`skebrm.experiments.report_posthoc.posthoc_tables`). A folder of GRPO
over-optimisation runs (folders holding ``tracking.jsonl``, finished or still running)
gets the per-run table, the plain answer and the plot of gold reward against √KL
(:mod:`skebrm.experiments.rl.report`).

Usage::

    python scripts/make_results_tables.py docs/runs/rmb_full --page docs/results/rmb_full.md
    python scripts/make_results_tables.py outputs/default/2026-11-25_15-00-00 \\
        multirun/label_noise/2026-11-25_15-10-00 --output results.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from skebrm.experiments.overoptimization import format_overoptimization
from skebrm.experiments.report import (
    format_table,
    label_noise_study,
    label_noise_table,
    load_runs,
    summary_table,
    targets_table,
    write_text,
)
from skebrm.experiments.report_posthoc import posthoc_tables
from skebrm.experiments.rl.report import (
    answer_rl_overoptimization,
    format_length_preference,
    format_rl_overoptimization,
    load_rl_runs,
    load_run_metas,
    plot_rl_overoptimization,
)


def _label_noise_plot(runs, path: Path) -> bool:
    """Test accuracy against the share of flipped labels, one line per family and
    calibrator (mean over the runs at a level) plus each family's base RM; False if no
    family's runs vary it."""
    study = label_noise_study(runs)
    if not study:
        return False
    from skebrm.metrics import plot_percent_lines

    several = len({backbone for backbone, _, _ in study}) > 1
    lines: dict[str, dict[float, float]] = {}
    for (backbone, calibrator, filtered), levels in study.items():
        prefix = f"{backbone}: " if several else ""
        lines.setdefault(f"{prefix}base", {}).update({n: v["base"] for n, v in levels.items()})
        name = f"{prefix}ebrm {calibrator}{'' if filtered else ' (unfiltered)'}"
        lines[name] = {n: v["ebrm"] for n, v in levels.items()}
    plot_percent_lines(
        lines,
        path,
        xlabel="flipped training labels (%)",
        ylabel="test accuracy (clean labels)",
        figsize=(5.6, 4.2),
        legend_size=8,
    )
    return True


def _command(folder: Path) -> str | None:
    """The command that produced a run (``.hydra/overrides.yaml``) or a sweep."""
    from omegaconf import OmegaConf

    if (folder / ".hydra" / "overrides.yaml").exists():
        words = ["skebrm-experiment", *OmegaConf.load(folder / ".hydra" / "overrides.yaml")]
    elif (folder / "multirun.yaml").exists():
        task = OmegaConf.load(folder / "multirun.yaml").hydra.overrides.task
        words = ["skebrm-experiment", "-m", *task]
    else:
        return None
    return " ".join(str(w) for w in words)


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def _docs_root(page: Path) -> Path:
    """The Sphinx source folder (the one holding ``conf.py``) that ``page`` lies in, else
    the page's own folder."""
    for folder in (page.resolve().parent, *page.resolve().parent.parents):
        if (folder / "conf.py").is_file():
            return folder
    return page.resolve().parent


def _link(path: Path, base: Path) -> str:
    """``path`` relative to the folder ``base`` of the page that links to it."""
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _rl_section(folder: Path, runs: list[dict], figures: Path, docs: Path) -> list[str]:
    """The GRPO over-optimisation runs under ``folder``: the table, the answer, the plot and,
    where the runs recorded it, each reward's length preference."""
    plot = figures / f"rl_overoptimization-{folder.name}.png"
    plot_rl_overoptimization(runs, plot, title=folder.name)
    lines = [
        f"### rl_overoptimization ({folder.name})",
        "",
        format_rl_overoptimization(runs),
        "",
        answer_rl_overoptimization(runs),
        "",
        "![gold and proxy reward against sqrt(KL), gold reward against the step]"
        f"({_link(plot, docs)})",
        "",
    ]
    lengths = format_length_preference(load_run_metas([folder]))
    if lengths:
        lines += ["#### Length preference of each reward", "", lengths, ""]
    return lines


def build_markdown(folders: list[Path], figures: Path, docs: Path) -> str:
    parts = [
        "<!-- generated by scripts/make_results_tables.py; do not edit by hand -->",
        "",
    ]
    for folder in folders:
        rl_runs = load_rl_runs([folder])
        if rl_runs:
            parts += _rl_section(folder, rl_runs, figures, docs)
            continue
        runs = load_runs(folder)
        if not runs:
            raise SystemExit(f"make_results_tables: no results.json under {str(folder)!r}.")
        experiment = runs[0][1]["experiment"]
        parts += [f"### {experiment} ({folder.name})", ""]
        command = _command(folder)
        if command:
            parts += [f"Command: `{command}`", ""]
        slug = f"{experiment}-{folder.name}"
        if len(runs) == 1 and runs[0][0] == folder:
            run_dir, results = runs[0]
            if results.get("task") == "overoptimization":
                parts += [format_overoptimization(results), ""]
            else:
                parts += [format_table(results), ""]
            for plot in results.get("plots", []):
                dest = figures / f"{slug}-{plot}"
                _copy_atomic(run_dir / plot, dest)
                parts += [f"![{plot}]({_link(dest, docs)})", ""]
            continue
        parts += ["Test split:", "", summary_table(runs), ""]
        for name in sorted({n for _, r in runs for n in r.get("ood", {})}):
            parts += [f"Out of distribution, {name}:", "", summary_table(runs, split=name), ""]
        if any("base_margin" in r["test"]["methods"] for _, r in runs):
            parts += [
                "Targets, over the clean runs' seeds; (d) from the runs at 30 % "
                "flipped training labels:",
                "",
                targets_table(runs),
                "",
            ]
        posthoc = posthoc_tables(runs)
        if posthoc:
            parts += [posthoc, ""]
        plot = figures / f"{slug}-label_noise.png"
        if _label_noise_plot(runs, plot):
            parts += [
                "Label noise: test accuracy (clean labels) against the share of flipped "
                "training labels, as base / EBRM (EBRM − base in points; share of the base "
                "RM's loss recovered):",
                "",
                label_noise_table(runs),
                "",
                f"![label noise]({_link(plot, docs)})",
                "",
            ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument("--output", type=Path, default=None, help="write the tables here")
    parser.add_argument(
        "--page",
        type=Path,
        default=None,
        help="splice the tables into this documentation page, between the lines "
        f"{RESULTS_START!r} and {RESULTS_END!r}",
    )
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        help="folder for the plots (default: figures/ of the Sphinx source folder that holds "
        "--page, else figures/ next to --output)",
    )
    args = parser.parse_args(argv)
    if args.output is None and args.page is None:
        parser.error("give --page (a documentation page to splice into) or --output (a file)")
    if args.output is not None:
        figures = args.figures or args.output.parent / "figures"
        text = build_markdown(args.folders, figures, args.output.parent)
        write_text(text, args.output)
        print(f"wrote {args.output}")
    if args.page is not None:
        figures = args.figures or _docs_root(args.page) / "figures"
        body = build_markdown(args.folders, figures, args.page.parent)
        write_text(splice(args.page.read_text(encoding="utf-8"), body), args.page)
        print(f"wrote {args.page}")
    return 0


RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


def splice(document: str, body: str) -> str:
    """Replace what lies between the results markers of ``document`` with ``body``."""
    start, end = document.find(RESULTS_START), document.find(RESULTS_END)
    if start < 0 or end < start:
        raise SystemExit(
            f"make_results_tables: the page needs the lines {RESULTS_START!r} and "
            f"{RESULTS_END!r} around its results section."
        )
    head = document[: start + len(RESULTS_START)]
    return f"{head}\n{body.rstrip()}\n{document[end:]}"


if __name__ == "__main__":
    sys.exit(main())

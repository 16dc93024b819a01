"""Results files and tables: atomic JSON, the per-run table and the multirun summary."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from skebrm._io import write_text_atomic

__all__ = [
    "BEST_OF_K_METHODS",
    "CALIBRATION_METHODS",
    "UNCERTAINTY_METHODS",
    "format_table",
    "label_noise_study",
    "label_noise_table",
    "load_runs",
    "markdown_table",
    "study_targets",
    "summary_table",
    "targets_table",
    "write_json",
    "write_text",
]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to a temporary file next to ``path``, then rename it."""
    return write_text_atomic(path, text)


def write_json(obj, path: str | os.PathLike) -> Path:
    """Atomic, strict JSON (NaN and infinities become ``null``; numpy becomes Python)."""
    return write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n", path)


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _abstain20(m: dict):
    abst = m.get("abstention", {})
    return abst.get(0.2, abst.get("0.2"))


def _method_rows(methods: dict, reference: str = "base") -> tuple[list[str], list[list[str]]]:
    sections = sorted({s for m in methods.values() for s in m["rewardbench"]["sections"]})
    has_votes = any("disagreement_auroc" in m for m in methods.values())
    best_of_k = next((m["best_of_k"] for m in methods.values() if "best_of_k" in m), None)
    header = ["method", "accuracy", f"Δ vs {reference} [95% CI]"]
    if len(sections) > 1:
        header += sections
    header += ["AUROC base errors", "acc. @20% abstain", "ECE"]
    if has_votes:
        header.append("AUROC disagreement")
    if best_of_k:
        header.append(
            f"best-of-k ({best_of_k['n_groups']} groups, mean k {best_of_k['mean_k']:.1f})"
        )
    rows = []
    for name, m in methods.items():
        vs = m.get(f"vs_{reference}")
        delta = f"{vs['difference']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]" if vs else ""
        row = [name, _fmt(m["accuracy"]), delta]
        if len(sections) > 1:
            secs = m["rewardbench"]["sections"]
            row += [_fmt(secs[s]["accuracy"]) if s in secs else "–" for s in sections]
        row += [
            _fmt(m.get(f"misorder_auroc_{reference}")),
            _fmt(_abstain20(m)),
            _fmt(m.get("ece")),
        ]
        if has_votes:
            row.append(_fmt(m.get("disagreement_auroc")))
        if best_of_k:
            row.append(_fmt(m.get("best_of_k", {}).get("accuracy")))
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_table(results: dict) -> str:
    """The per-run results as markdown tables (test split, then each OOD set)."""
    title = (
        f"experiment={results['experiment']} backbone={results['backbone']} "
        f"data={results['data']} calibrator={results['calibrator']} "
        f"label_noise={results['label_noise']} calibrator_fit_on={results['calibrator_fit_on']}"
    )
    parts = [title, "", f"test split ({_describe(results['test'], results['n_pairs']['test'])})"]
    parts += ["", markdown_table(*_method_rows(results["test"]["methods"]))]
    for name, ood in results.get("ood", {}).items():
        parts += ["", f"out of distribution: {name} ({_describe(ood, ood['n_pairs'])})", ""]
        parts.append(markdown_table(*_method_rows(ood["methods"])))
    parts += _posthoc_parts(results)
    return "\n".join(parts)


def _posthoc_parts(results: dict) -> list[str]:
    """Length statistics, pair selection and out-of-distribution flags, where a run has them."""
    blocks = {"test": results["test"], **results.get("ood", {})}
    parts: list[str] = []
    if any("length" in b for b in blocks.values()):
        rows = [
            [
                name,
                _fmt(b["length"]["chosen_longer"]),
                _fmt(b["length"]["reward_spearman"]),
                _fmt(b["methods"].get("lwr", {}).get("length_spearman")),
            ]
            for name, b in blocks.items()
            if "length" in b
        ]
        header = ["set", "chosen is longer", "Spearman(base, length)", "Spearman(lwr, length)"]
        parts += ["", "length bias", "", markdown_table(header, rows)]
    if any("selection" in b for b in blocks.values()):
        alphas = next(b["selection"]["alphas"] for b in blocks.values() if "selection" in b)
        header = ["set", "score", "method"] + [f"risk / coverage @ α={a:g}" for a in alphas]
        rows = []
        for name, b in blocks.items():
            for score, entry in b.get("selection", {}).get("scores", {}).items():
                for method in b["selection"]["methods"]:
                    per = entry[method]
                    cells = []
                    for a in alphas:
                        e = per.get(a, per.get(str(a)))
                        none = e.get("accepted_none")
                        cells.append(
                            "accepts none" if none else f"{_fmt(e['risk'])} / {_fmt(e['coverage'])}"
                        )
                    rows.append([name, score, method, *cells])
        calibration = next(
            b["selection"]["calibration"] for b in blocks.values() if "selection" in b
        )
        parts += [
            "",
            f"pair selection (calibrated on {calibration})",
            "",
            markdown_table(header, rows),
        ]
    flags = {n: b["ood_flags"] for n, b in blocks.items() if "ood_flags" in b}
    if flags:
        names = sorted({k for f in flags.values() for k in f})
        rows = [[n, *(_fmt(f.get(k)) for k in names)] for n, f in flags.items()]
        parts += [
            "",
            "out-of-distribution AUROC (in: test split)",
            "",
            markdown_table(["set", *names], rows),
        ]
    steps = {n: b["step_choice"] for n, b in blocks.items() if "step_choice" in b}
    if steps:
        rows = []
        for n, sc in steps.items():
            folds = sc["folds"]
            rows.append(
                [
                    n,
                    " / ".join(f["step"] for f in folds),
                    " / ".join(_interval(f["chosen_vs_base"]) for f in folds),
                    "yes" if any(f["significantly_worse"] for f in folds) else "no",
                    _fmt(sc["chosen_accuracy"]),
                    f"{sc['best_fixed']} {_fmt(sc['fixed_accuracy'][sc['best_fixed']])}",
                    f"{sc['chosen_minus_best_fixed']:+.3f}",
                ]
            )
        header = [
            "set",
            "chosen (fold 1 / 2)",
            "chosen − base on the other half",
            "significantly worse",
            "chosen accuracy",
            "best fixed step",
            "chosen − best fixed",
        ]
        confidence = next(iter(steps.values()))["confidence"]
        parts += [
            "",
            f"choosing guard (decided on half of each set's prompts, confidence {confidence:g})",
            "",
            markdown_table(header, rows),
        ]
    return parts


def _interval(vs: dict) -> str:
    """``+0.012 [-0.004, +0.028]`` of a paired-bootstrap record."""
    return f"{vs['difference']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]"


def _describe(block: dict, n_pairs: int) -> str:
    """``"N pairs"``, plus how many carry annotator votes and how many of those disagree."""
    text = f"{n_pairs} pairs"
    if "n_pairs_with_votes" in block:
        text += (
            f"; annotators disagree on {block['n_pairs_disagreement']} of the "
            f"{block['n_pairs_with_votes']} with votes"
        )
    return text


def load_runs(root: str | os.PathLike) -> list[tuple[Path, dict]]:
    """Every ``results.json`` below ``root`` (job folders in numeric order), parsed.

    Runs written before results recorded ``max_length`` get it from the run's own
    ``.hydra/config.yaml`` (``backbone.max_length``) where that file exists.
    """

    def order(path: Path):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]

    runs = []
    for p in sorted(Path(root).rglob("results.json"), key=order):
        results = json.loads(p.read_text(encoding="utf-8"))
        config = p.parent / ".hydra" / "config.yaml"
        if "max_length" not in results and config.is_file():
            from omegaconf import OmegaConf

            length = OmegaConf.select(OmegaConf.load(config), "backbone.max_length")
            if length is not None:
                results["max_length"] = int(length)
        runs.append((p.parent, results))
    return runs


def _job_overrides(folder: Path) -> dict[str, str]:
    """The job's command-line overrides (``key=value`` in ``.hydra/overrides.yaml``)."""
    path = Path(folder) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        item = line.strip()
        if item.startswith("- "):
            key, sep, value = item[2:].strip().strip("'\"").partition("=")
            if sep:
                out[key.lstrip("+~")] = value
    return out


UNCERTAINTY_METHODS = ("base_margin", "ebrm", "laplace_bt", "bt_ensemble_mean")
"""Methods whose pair uncertainty the summary tables show (where a run has them): the
base margin every uncertainty must beat, EBRM, the Laplace head and the ensemble (the
ensemble's three aggregations share one uncertainty, as EBRM's three readings do)."""

CALIBRATION_METHODS = ("base", "ebrm", "laplace_bt")
"""Methods whose preference ECE the summary tables show (where a run has them)."""

BEST_OF_K_METHODS = ("base", "ebrm")
"""Methods whose best-of-k accuracy the summary tables show (where a run has it)."""


def summary_table(
    runs: list[tuple[Path, dict]],
    *,
    keys: tuple[str, ...] = (
        "backbone",
        "max_length",
        "data",
        "calibrator",
        "label_noise",
        "filter_conflicts",
        "calibrator_fit_on",
    ),
    methods: tuple[str, ...] | None = None,
    split: str = "test",
) -> str:
    """One markdown row per run: its settings, then each method's accuracy.

    Keys that are the same in every run are left out. Where the data has several sections
    (RMB: Helpfulness / Harmlessness), the base RM's and EBRM's section scores follow,
    then the paired-bootstrap difference of EBRM to the base RM with its interval. Then,
    for the methods of :data:`UNCERTAINTY_METHODS` that a run has, the misorder AUROC of
    their pair uncertainty for the base RM's errors (the base margin's is the one to
    beat) and, where the data has annotator votes, their disagreement AUROC; the
    preference ECE of :data:`CALIBRATION_METHODS`; and, where the data has best-of-k
    groups, the best-of-k accuracy of :data:`BEST_OF_K_METHODS`. A column appears only
    if some run has it, and a ``pairs`` column where the number of pairs scored differs
    between runs. ``split`` is ``"test"`` or the name of an out-of-distribution set. The
    accuracy columns leave out ``base_margin`` (the base RM's rewards) unless ``methods``
    names it.
    """
    if not runs:
        return "(no runs)"
    varying = [k for k in keys if len({str(r.get(k)) for _, r in runs}) > 1] or [
        k for k in keys if k in ("backbone", "data")
    ]
    # sweep overrides that vary and are not among the result keys (for example
    # calibrator.estimator.random_state=0,1,2): one column each, from .hydra/overrides.yaml
    overrides = [_job_overrides(folder) for folder, _ in runs]
    swept = [
        k
        for k in dict.fromkeys(k for o in overrides for k in o)
        if k.rsplit(".", 1)[-1] not in keys and len({o.get(k) for o in overrides}) > 1
    ]

    def block(r):
        return r["test"] if split == "test" else r.get("ood", {}).get(split)

    present = [b for b in (block(r) for _, r in runs) if b]
    blocks = [b["methods"] for b in present]
    # the number of pairs scored, where it differs between runs (guard_target scores half
    # of its set)
    show_pairs = len({b.get("n_pairs") for b in present}) > 1
    names: list[str] = list(methods) if methods else []
    if not names:
        for ms in blocks:
            for n in ms:
                if n not in names and n != "base_margin":
                    names.append(n)
    sections = sorted({sec for ms in blocks for sec in ms["base"]["rewardbench"]["sections"]})
    per_section = (
        [(m, sec) for m in ("base", "ebrm") for sec in sections] if len(sections) > 1 else []
    )

    def present(candidates, key):
        return [m for m in candidates if any(key in ms.get(m, {}) for ms in blocks)]

    extra = [
        (f"AUROC base errors: {m}", m, "misorder_auroc_base")
        for m in present(UNCERTAINTY_METHODS, "misorder_auroc_base")
    ]
    extra += [
        (f"AUROC disagreement: {m}", m, "disagreement_auroc")
        for m in present(UNCERTAINTY_METHODS, "disagreement_auroc")
    ]
    extra += [(f"ECE: {m}", m, "ece") for m in present(CALIBRATION_METHODS, "ece")]
    extra += [(f"best-of-k: {m}", m, "best_of_k") for m in present(BEST_OF_K_METHODS, "best_of_k")]
    header = [
        *varying,
        *swept,
        *(["pairs"] if show_pairs else []),
        *names,
        *(f"{m}: {sec}" for m, sec in per_section),
        "EBRM − base [95% CI]",
        *(title for title, _, _ in extra),
    ]
    rows = []
    for (_, r), over in zip(runs, overrides, strict=True):
        b = block(r)
        if b is None:
            continue
        ms = b["methods"]
        row = [str(r.get(k)) for k in varying] + [over.get(k, "–") for k in swept]
        if show_pairs:
            row.append(str(b.get("n_pairs", "–")))
        row += [_fmt(ms[n]["accuracy"]) if n in ms else "–" for n in names]
        for m, sec in per_section:
            secs = ms.get(m, {}).get("rewardbench", {}).get("sections", {})
            row.append(_fmt(secs[sec]["accuracy"]) if sec in secs else "–")
        vs = ms.get("ebrm", {}).get("vs_base")
        row.append(
            f"{vs['difference']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]" if vs else "–"
        )
        for _, m, key in extra:
            value = ms.get(m, {}).get(key)
            row.append(_fmt(value["accuracy"] if isinstance(value, dict) else value))
        rows.append(row)
    return markdown_table(header, rows)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def study_targets(
    runs: list[tuple[Path, dict]],
    *,
    noise: float = 0.3,
    auroc_margin: float = 0.05,
    min_gain: float = 0.01,
    recovery: float = 0.5,
) -> dict[tuple[str, str, str], dict]:
    """The full-scale study's targets for each (backbone, calibrator, split) of a study.

    Clean runs (``label_noise == 0``) are the seeds; on each split (``"test"`` and every
    out-of-distribution set):

    * ``a``: the mean misorder AUROC of EBRM's pair uncertainty is at least the base
      margin's + ``auroc_margin``;
    * ``b``: EBRM's mean preference ECE is at most the base head's;
    * ``c_plus_one``: EBRM's mean accuracy gain is at least ``min_gain`` and the paired
      bootstrap interval excludes 0 in every seed; ``c_never_below``: no seed's interval
      lies below 0;
    * ``d``: runs at ``label_noise == noise`` recover at least ``recovery`` of the accuracy
      the base RM loses to the flipped labels (EBRM − base at that noise, over clean base
      − noisy base); None where there is no such run or the base loses nothing.
    """
    groups: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for _, r in runs:
        key = (str(r.get("backbone")), str(r.get("calibrator")))
        groups.setdefault(key, {}).setdefault(float(r.get("label_noise", 0.0)), []).append(r)

    def block(r, split):
        return r["test"] if split == "test" else r.get("ood", {}).get(split)

    out: dict[tuple[str, str, str], dict] = {}
    for (backbone, calibrator), by_noise in groups.items():
        clean = by_noise.get(0.0, [])
        if not clean:
            continue
        splits = ["test", *sorted({n for r in clean for n in r.get("ood", {})})]
        for split in splits:
            ms = [block(r, split)["methods"] for r in clean if block(r, split)]
            if not ms:
                continue
            gains = [m["ebrm"]["accuracy"] - m["base"]["accuracy"] for m in ms]
            cis = [m["ebrm"].get("vs_base", {}) for m in ms]
            auroc = _mean(m["ebrm"].get("misorder_auroc_base") for m in ms)
            margin = _mean(m.get("base_margin", {}).get("misorder_auroc_base") for m in ms)
            ece = _mean(m["ebrm"].get("ece") for m in ms)
            base_ece = _mean(m["base"].get("ece") for m in ms)
            row = {
                "n_seeds": len(ms),
                "base_accuracy": _mean(m["base"]["accuracy"] for m in ms),
                "gain": float(np.mean(gains)),
                "n_above": sum(ci.get("ci_low", 0.0) > 0 for ci in cis),
                "n_below": sum(ci.get("ci_high", 0.0) < 0 for ci in cis),
                "auroc": auroc,
                "margin_auroc": margin,
                "auroc_gain": None if auroc is None or margin is None else auroc - margin,
                "ece": ece,
                "base_ece": base_ece,
            }
            row["a"] = None if row["auroc_gain"] is None else row["auroc_gain"] >= auroc_margin
            row["b"] = None if ece is None or base_ece is None else ece <= base_ece
            row["c_plus_one"] = row["gain"] >= min_gain and row["n_above"] == len(ms)
            row["c_never_below"] = row["n_below"] == 0
            noisy = [block(r, split)["methods"] for r in by_noise.get(noise, [])]
            noisy = [m for m in noisy if m]
            row["d_recovered"] = row["d"] = None
            if noisy:
                base_noisy = _mean(m["base"]["accuracy"] for m in noisy)
                lost = row["base_accuracy"] - base_noisy
                row["d_lost"] = lost
                if lost > 0:
                    ebrm_noisy = _mean(m["ebrm"]["accuracy"] for m in noisy)
                    row["d_recovered"] = (ebrm_noisy - base_noisy) / lost
                    row["d"] = row["d_recovered"] >= recovery
            out[(backbone, calibrator, split)] = row
    return out


def _verdict(flag: bool | None) -> str:
    return "–" if flag is None else ("met" if flag else "not met")


def targets_table(runs: list[tuple[Path, dict]], **kwargs) -> str:
    """:func:`study_targets` as a markdown table, one row per family, calibrator and split."""
    header = [
        "backbone",
        "calibrator",
        "split",
        "seeds",
        "base acc",
        "EBRM − base (pts; seeds sig. up / down)",
        "(a) AUROC EBRM / margin",
        "(b) ECE EBRM / base",
        "(c) ≥ +1 pt, sig.",
        "(c) never sig. below",
        "(d) share of the loss recovered at 30 % noise",
    ]
    rows = []
    for (backbone, calibrator, split), t in study_targets(runs, **kwargs).items():
        if t["d_recovered"] is not None:
            d = f"{t['d_recovered']:.0%}: {_verdict(t['d'])}"
        elif "d_lost" in t:
            d = f"base loses nothing ({-100 * t['d_lost']:+.1f} pts): –"
        else:
            d = "–"
        rows.append(
            [
                backbone,
                calibrator,
                split,
                str(t["n_seeds"]),
                _fmt(t["base_accuracy"]),
                f"{100 * t['gain']:+.1f} ({t['n_above']} / {t['n_below']})",
                f"{_fmt(t['auroc'])} / {_fmt(t['margin_auroc'])}: {_verdict(t['a'])}",
                f"{_fmt(t['ece'])} / {_fmt(t['base_ece'])}: {_verdict(t['b'])}",
                _verdict(t["c_plus_one"]),
                _verdict(t["c_never_below"]),
                d,
            ]
        )
    return markdown_table(header, rows) if rows else "(no clean runs)"


def label_noise_study(
    runs: list[tuple[Path, dict]], *, split: str = "test"
) -> dict[tuple[str, str, bool], dict[float, dict]]:
    """Accuracy against the share of flipped training labels, per family and calibrator.

    Groups the runs by (backbone, calibrator, filter_conflicts) and, within a group, by
    ``label_noise``; only groups with at least two noise levels are kept. Each level holds
    ``n_runs`` and the mean accuracies ``base`` and ``ebrm`` on ``split`` (clean labels),
    and ``recovered``: the share of the accuracy the base RM loses against the clean runs
    that EBRM wins back, ``(ebrm − base) / (clean base − base)`` (None at 0 % noise, where
    there are no clean runs, or where the base loses nothing).
    """
    groups: dict[tuple[str, str, bool], dict[float, list[dict]]] = {}
    for _, r in runs:
        b = r["test"] if split == "test" else r.get("ood", {}).get(split)
        if not b:
            continue
        key = (
            str(r.get("backbone")),
            str(r.get("calibrator")),
            bool(r.get("filter_conflicts", True)),
        )
        level = float(r.get("label_noise", 0.0))
        groups.setdefault(key, {}).setdefault(level, []).append(b["methods"])
    out: dict[tuple[str, str, bool], dict[float, dict]] = {}
    for key, by_noise in groups.items():
        if len(by_noise) < 2:
            continue
        clean = by_noise.get(0.0)
        clean_base = _mean(m["base"]["accuracy"] for m in clean) if clean else None
        levels = {}
        for noise in sorted(by_noise):
            ms = by_noise[noise]
            base = _mean(m["base"]["accuracy"] for m in ms)
            ebrm = _mean(m["ebrm"]["accuracy"] for m in ms)
            lost = None if clean_base is None or noise == 0.0 else clean_base - base
            levels[noise] = {
                "n_runs": len(ms),
                "base": base,
                "ebrm": ebrm,
                "recovered": (ebrm - base) / lost if lost is not None and lost > 0 else None,
            }
        out[key] = levels
    return out


def label_noise_table(runs: list[tuple[Path, dict]], *, split: str = "test") -> str:
    """:func:`label_noise_study` as a markdown table: a row per family and calibrator, a
    column per noise level with "base / EBRM (EBRM − base in points; share recovered)"."""
    study = label_noise_study(runs, split=split)
    if not study:
        return "(no label-noise sweep)"
    noises = sorted({n for levels in study.values() for n in levels})
    header = ["backbone", "calibrator", "filtered", *(f"{100 * n:.0f} %" for n in noises)]
    rows = []
    for (backbone, calibrator, filtered), levels in study.items():
        row = [backbone, calibrator, "yes" if filtered else "no"]
        for n in noises:
            if n not in levels:
                row.append("–")
                continue
            v = levels[n]
            note = f"{100 * (v['ebrm'] - v['base']):+.1f}".replace("-", "−")
            if v["recovered"] is not None:
                note += f"; {100 * v['recovered']:.0f} %".replace("-", "−")
            runs_note = f", {v['n_runs']} runs" if v["n_runs"] > 1 else ""
            row.append(f"{_fmt(v['base'])} / {_fmt(v['ebrm'])} ({note}){runs_note}")
        rows.append(row)
    return markdown_table(header, rows)

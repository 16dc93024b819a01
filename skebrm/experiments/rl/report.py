"""The report of the GRPO over-optimisation study, built from the runs' JSON lines.

Every run folder holds ``run.json`` (the proxy, β, the policy and the proxies' agreement
with the gold RM) and ``tracking.jsonl`` (one record per evaluation of
:class:`~skebrm.experiments.rl.tracking.GoldTracker`). From a set of such folders:

* :func:`summarise_run`: peak gold reward, the step and KL at the peak, gold at the last
  step, the drop from the peak (with its standard error over the evaluation prompts),
  length and distinct-2 at the peak and at the end;
* :func:`format_rl_overoptimization`: that summary as a Markdown table, one row per run;
* :func:`format_length_preference`: how often the gold RM and each proxy prefer the longer,
  and the cut-off, of two held-out policy samples (from the runs' ``run.json``,
  :func:`load_run_metas`, dry runs included);
* :func:`answer_rl_overoptimization`: the plain answer (does a proxy peak later and
  higher than the base proxy; or, when nothing over-optimised, the KL reached);
* :func:`plot_rl_overoptimization`: gold reward against √KL, the proxy reward on a second
  panel, one line per run with bands over the evaluation prompts (the layout of Gao et
  al. 2023, Fig. 1), and gold reward against the training step on a third.

Runs still in progress are reported as far as they got.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from skebrm.experiments.report import markdown_table
from skebrm.experiments.rl.tracking import read_jsonl

__all__ = [
    "answer_rl_overoptimization",
    "format_length_preference",
    "format_rl_overoptimization",
    "load_rl_runs",
    "load_run_metas",
    "plot_rl_overoptimization",
    "run_label",
    "summarise_run",
]

TRACKING_FILE = "tracking.jsonl"
RUN_FILE = "run.json"


def _folders_holding(roots: Iterable[str | os.PathLike], name: str) -> list[Path]:
    """The folders under ``roots`` (a root itself included) that hold a file ``name``,
    sorted."""
    folders = set()
    for root in roots:
        root = Path(root)
        if (root / name).is_file():
            folders.add(root)
        elif root.is_dir():
            folders |= {p.parent for p in root.rglob(name)}
    return sorted(folders)


def load_rl_runs(roots: Iterable[str | os.PathLike]) -> list[dict]:
    """Every run folder under ``roots`` (a folder holding ``tracking.jsonl``), sorted.

    Returns
    -------
    list of dict
        ``folder``, ``meta`` (``run.json``, empty if absent) and ``records`` (sorted by step).
    """
    runs = []
    for folder in _folders_holding(roots, TRACKING_FILE):
        meta_path = folder / RUN_FILE
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        records = sorted(read_jsonl(folder / TRACKING_FILE), key=lambda r: r["step"])
        if records:
            runs.append({"folder": folder, "meta": meta, "records": records})
    return runs


def _proxy_and_beta(run: dict) -> tuple[str | None, float]:
    """The proxy of a run (``None`` when ``run.json`` is missing) and its β."""
    meta = run.get("meta") or {}
    return meta.get("proxy"), float(meta.get("beta", 0.0))


def run_label(run: dict) -> str:
    """``<proxy>, β=<beta>`` of a run (its folder name when ``run.json`` is missing)."""
    proxy, beta = _proxy_and_beta(run)
    return Path(run["folder"]).name if proxy is None else f"{proxy}, β={beta:g}"


def summarise_run(records: list[dict]) -> dict:
    """Peak and end of a run's gold curve (records of ``tracking.jsonl``).

    Returns
    -------
    dict
        ``peak_gold``, ``peak_step``, ``peak_kl``, ``final_step``, ``final_gold``,
        ``final_kl``, ``drop_from_peak`` (peak − final), ``drop_se`` (its standard error
        over the evaluation prompts, from the paired per-prompt differences; ``None``
        without per-prompt values), ``falls`` (the peak is before the last evaluation
        and the drop exceeds two standard errors), ``proxy_change`` (the optimised proxy's
        reward at the end minus at the gold peak), ``over_optimises`` (the gold falls
        while the proxy reward rises: Gao et al.'s over-optimisation, as opposed to a
        policy that moves back on both), ``length_at_peak``,
        ``length_at_end``, ``distinct_2_at_peak``, ``distinct_2_at_end``,
        ``n_evaluations``.
    """
    if not records:
        raise ValueError("summarise_run: records is empty; the run has no evaluation yet.")
    records = sorted(records, key=lambda r: r["step"])
    steps = [r["step"] for r in records]
    if len(set(steps)) != len(steps):
        raise ValueError(f"summarise_run: a step is recorded twice, steps {steps!r}.")
    gold = np.array([r["gold"] for r in records], dtype=float)
    i = int(np.argmax(gold))
    peak, end = records[i], records[-1]
    drop = float(gold[i] - gold[-1])
    se = None
    if peak.get("gold_per_prompt") and end.get("gold_per_prompt"):
        diff = np.asarray(peak["gold_per_prompt"], float) - np.asarray(end["gold_per_prompt"])
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    falls = peak["step"] < end["step"] and drop > 0 and (se is None or drop > 2 * se)
    proxy_change = float(end["proxy"] - peak["proxy"])
    return {
        "peak_gold": float(gold[i]),
        "peak_step": int(peak["step"]),
        "peak_kl": float(peak["kl"]),
        "final_step": int(end["step"]),
        "final_gold": float(gold[-1]),
        "final_kl": float(end["kl"]),
        "drop_from_peak": drop,
        "drop_se": se,
        "falls": bool(falls),
        "proxy_change": proxy_change,
        "over_optimises": bool(falls and proxy_change > 0),
        "length_at_peak": float(peak["length"]),
        "length_at_end": float(end["length"]),
        "distinct_2_at_peak": peak.get("distinct_2"),
        "distinct_2_at_end": end.get("distinct_2"),
        "n_evaluations": len(records),
    }


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def format_rl_overoptimization(runs: list[dict]) -> str:
    """One row per run (see :func:`summarise_run`), as Markdown."""
    header = [
        "proxy",
        "agreement",
        "steps",
        "peak gold",
        "step at peak",
        "KL at peak",
        "gold at end",
        "drop (± s.e.)",
        "KL at end",
        "length peak → end",
        "distinct-2 peak → end",
    ]
    rows = []
    for run in runs:
        s = summarise_run(run["records"])
        meta = run.get("meta") or {}
        agree = (meta.get("agreement") or {}).get(meta.get("proxy"), {}).get("accuracy")
        drop = _f(s["drop_from_peak"])
        if s["drop_se"] is not None:
            drop += f" ± {s['drop_se']:.3f}"
        rows.append(
            [
                run_label(run),
                _f(agree),
                str(s["final_step"]),
                _f(s["peak_gold"]),
                str(s["peak_step"]),
                _f(s["peak_kl"], 2),
                _f(s["final_gold"]),
                drop,
                _f(s["final_kl"], 2),
                f"{s['length_at_peak']:.1f} → {s['length_at_end']:.1f}",
                f"{_f(s['distinct_2_at_peak'])} → {_f(s['distinct_2_at_end'])}",
            ]
        )
    return markdown_table(header, rows)


def load_run_metas(roots: Iterable[str | os.PathLike]) -> list[dict]:
    """The ``run.json`` of every run folder under ``roots``, dry runs (no
    ``tracking.jsonl``) included, sorted by folder."""
    return [
        json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        for folder in _folders_holding(roots, RUN_FILE)
    ]


def format_length_preference(metas: list[dict]) -> str:
    """How often the gold RM and each proxy prefer the longer, and the cut-off, of two
    samples of one held-out prompt, as Markdown (``""`` when no run recorded it).

    ``metas`` are runs' ``run.json`` (:func:`load_run_metas`). Every run of a study fits
    the same proxies on the same samples, so the first that holds
    ``gold_length_preference`` (see
    :func:`~skebrm.experiments.overoptimization.length_preference`) gives the table.
    """
    meta = next((m for m in metas if m.get("gold_length_preference")), None)
    if meta is None:
        return ""
    header = ["reward", "agreement with gold", "prefers the longer", "prefers the cut-off"]
    gold = meta["gold_length_preference"]
    rows = [["gold RM", "–", _f(gold["longer"]), _f(gold["cut_off"])]]
    for name, a in (meta.get("agreement") or {}).items():
        pref = a.get("length_preference") or {}
        rows.append([name, _f(a.get("accuracy")), _f(pref.get("longer")), _f(pref.get("cut_off"))])
    n = f"{gold['n_pairs_longer']:,} pairs of unequal length"
    if gold.get("n_pairs_cut_off"):
        n += f", {gold['n_pairs_cut_off']:,} of one cut-off and one finished sample"
    return (
        markdown_table(header, rows)
        + f"\n\nShares of held-out policy sample pairs ({n}); a tie counts one half, 0.5 is "
        "no preference."
    )


def answer_rl_overoptimization(runs: list[dict], *, reference: str = "base") -> str:
    """The study's answer in plain words, for each β: where each proxy's gold peak is
    against the ``reference`` proxy's (higher or lower, at a larger or smaller KL, at a
    later or earlier step) and whether its gold then falls, and with its proxy reward
    rising (over-optimisation) or falling too; or, when no gold curve fell
    (:func:`summarise_run`), that none did and the KL each reached."""
    by_beta: dict[float, dict[str, dict]] = {}
    for run in runs:
        proxy, beta = _proxy_and_beta(run)
        if proxy is not None:
            by_beta.setdefault(beta, {})[proxy] = summarise_run(run["records"])
    parts = []
    for beta in sorted(by_beta):
        s = by_beta[beta]
        head = f"At β = {beta:g}: "
        if not any(v["falls"] for v in s.values()):
            reached = ", ".join(
                f"{name} {v['final_kl']:.2f} nats after {v['final_step']} steps"
                for name, v in s.items()
            )
            parts.append(
                head + "no proxy over-optimised within the steps run (no gold curve fell "
                f"from its peak by more than two standard errors); KL reached: {reached}."
            )
            continue
        ref = s.get(reference)
        if ref is None:
            parts.append(head + f"no run of the reference proxy {reference!r} to compare with.")
            continue
        lines = [
            f"{reference} peaks at gold {ref['peak_gold']:.3f} at KL {ref['peak_kl']:.2f} "
            f"(step {ref['peak_step']}) and "
            + (_fall(ref) if ref["falls"] else "does not fall significantly")
        ]
        for name, v in s.items():
            if name == reference:
                continue
            # in KL and in steps separately: a slower proxy can peak later at a smaller KL
            level = _compare(v["peak_gold"], ref["peak_gold"], "higher", "lower", "as high")
            kl = _compare(v["peak_kl"], ref["peak_kl"], "a larger", "a smaller", "the same", 2)
            step = _compare(v["peak_step"], ref["peak_step"], "a later", "an earlier", "the same")
            lines.append(
                f"{name} peaks {level} (gold {v['peak_gold']:.3f}) at {kl} KL "
                f"({v['peak_kl']:.2f} nats) and {step} step ({v['peak_step']}), "
                + ("then " + _fall(v) if v["falls"] else "with no significant fall")
            )
        parts.append(head + "; ".join(lines) + ".")
    return "\n\n".join(parts)


def _fall(v: dict) -> str:
    """The fall of a run whose gold falls after its peak (see :func:`summarise_run`), and
    what its proxy reward did meanwhile, in words."""
    fall = f"falls by {v['drop_from_peak']:.3f} by step {v['final_step']}"
    if v["over_optimises"]:
        return (
            fall + f" while its proxy reward rises by {v['proxy_change']:.3f} (over-optimisation)"
        )
    return fall + f", its proxy reward falling too (by {-v['proxy_change']:.3f})"


def _compare(value, reference, more: str, less: str, same: str, digits: int = 3) -> str:
    """The word for ``value`` against ``reference`` at the precision the answer prints."""
    a, b = round(float(value), digits), round(float(reference), digits)
    return more if a > b else less if a < b else same


def _curve(records: list[dict], key: str, *, x: str = "sqrt_kl"):
    """``(x, mean, half-width of the 95 % band)`` of ``key`` over a run's evaluations, in
    step order, against √KL (``x="sqrt_kl"``) or the training step (``x="step"``)."""
    if x not in ("sqrt_kl", "step"):
        raise ValueError(f"_curve: x must be 'sqrt_kl' or 'step', got {x!r}.")
    records = sorted(records, key=lambda r: r["step"])
    if x == "step":
        xs = np.array([r["step"] for r in records], dtype=float)
    else:
        xs = np.sqrt(np.maximum([r["kl"] for r in records], 0.0))
    mean = np.array([r[key] for r in records], dtype=float)
    half = np.zeros_like(mean)
    for j, r in enumerate(records):
        pp = np.asarray(r.get(f"{key}_per_prompt") or [], dtype=float)
        pp = pp[np.isfinite(pp)]
        if len(pp) > 1:
            half[j] = 1.96 * pp.std(ddof=1) / np.sqrt(len(pp))
    return xs, mean, half


_LINESTYLES = ("-", "--", ":", "-.")


def _line_styles(runs: list[dict]) -> list[tuple[str, str]]:
    """A ``(colour, linestyle)`` per run: one colour per proxy, one line style per β, so
    the runs of one proxy at several β read as one family."""
    keys = [
        (run_label(run) if proxy is None else proxy, beta)
        for run, (proxy, beta) in zip(runs, map(_proxy_and_beta, runs))
    ]
    proxies = list(dict.fromkeys(proxy for proxy, _ in keys))
    betas = sorted({beta for _, beta in keys})
    return [
        (f"C{proxies.index(proxy) % 10}", _LINESTYLES[betas.index(beta) % len(_LINESTYLES)])
        for proxy, beta in keys
    ]


def plot_rl_overoptimization(runs: list[dict], path: str | os.PathLike, *, title: str = ""):
    """Gold reward and proxy reward against √KL, and gold reward against the training
    step, one line per run.

    One colour per proxy and one line style per β (solid for the smallest). Bands are 95 %
    normal intervals of the mean over evaluation prompts. Every line joins its points in
    step order and ends in a ring: the KL of a run need not grow at every step, and where
    it falls back the √KL panels show the path turning back, which the step panel
    resolves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skebrm._io import write_bytes_atomic

    panels = (("gold", "sqrt_kl"), ("proxy", "sqrt_kl"), ("gold", "step"))
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.2))
    for run, (colour, dash) in zip(runs, _line_styles(runs)):
        label = run_label(run)
        for ax, (key, x) in zip(axes, panels):
            xs, mean, half = _curve(run["records"], key, x=x)
            ax.plot(xs, mean, marker=".", color=colour, linestyle=dash, label=label)
            ax.plot(xs[-1:], mean[-1:], marker="o", markerfacecolor="none", color=colour)
            ax.fill_between(xs, mean - half, mean + half, color=colour, alpha=0.15)
    axes[0].set_ylabel("gold reward")
    axes[1].set_ylabel("proxy reward (its own units)")
    axes[2].set_ylabel("gold reward")
    for ax, (_, x) in zip(axes, panels):
        ax.set_xlabel("√KL(π ‖ π_ref)  (nats^½)" if x == "sqrt_kl" else "GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())

"""Tables of the post-hoc tools over a study's runs, and their targets.

Every run of ``experiment=rmb_full`` with the ``posthoc`` config node scores, on the test
split and on each out-of-distribution set: the length-debiased rewards (``lwr``,
``ebrm+lwr``, ``lwr+ebrm``), the pessimistic reward, pair selection per confidence score,
the out-of-distribution flags and the choosing guard. This module gathers them over the
seeds of each (backbone, calibrator) and states the study's targets:

* ``a``: ``lwr`` beats the base by at least ``min_gain`` with a paired-bootstrap interval
  that excludes 0 (in every seed) on at least one set of the family;
* ``b``: on the test split, for one selection method (``ltt`` or ``conformal``), the
  realised risk is at most ``α + slack`` at every ``α`` for every score (mean over seeds;
  a selector that accepts nothing has risk 0), and at ``α = 0.2`` the best score's
  coverage is at least ``coverage_ratio`` times the margin's;
* ``d``: the Mahalanobis flag's AUROC is at least ``min_auroc`` on at least two sets;
* ``e``: the choosing guard's step is never significantly below the base on the held-out
  half (any seed, either fold), and on average it is at least the best single fixed step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skebrm.experiments.report import _fmt, markdown_table

__all__ = ["posthoc_tables", "posthoc_targets", "posthoc_targets_table"]

DEBIAS_METHODS = ("lwr", "ebrm+lwr", "lwr+ebrm", "pessimistic", "ebrm")


def _groups(runs) -> dict[tuple[str, str], list[dict]]:
    """Clean runs with post-hoc results, by (backbone, calibrator)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for _, r in runs:
        if "posthoc" not in r or float(r.get("label_noise", 0.0)) != 0.0:
            continue
        out.setdefault((str(r["backbone"]), str(r["calibrator"])), []).append(r)
    return out


def _blocks(r: dict) -> dict[str, dict]:
    return {"test": r["test"], **r.get("ood", {})}


def _alpha_entry(per: dict, alpha: float) -> dict:
    return per.get(alpha, per.get(str(alpha), per.get(f"{alpha:g}")))


def _sets(rs: list[dict]) -> list[str]:
    names = ["test"]
    for r in rs:
        names += [n for n in r.get("ood", {}) if n not in names]
    return names


def _gain(rs, split, method):
    """Mean gain over seeds, and how many seeds' intervals lie above / below 0."""
    ms = [_blocks(r).get(split, {}).get("methods", {}) for r in rs]
    ms = [m for m in ms if method in m and "base" in m]
    if not ms:
        return None
    cis = [m[method].get("vs_base", {}) for m in ms]
    return {
        "gain": float(np.mean([m[method]["accuracy"] - m["base"]["accuracy"] for m in ms])),
        "ci_low": float(np.mean([c.get("ci_low", np.nan) for c in cis])),
        "ci_high": float(np.mean([c.get("ci_high", np.nan) for c in cis])),
        "n_above": sum(c.get("ci_low", 0.0) > 0 for c in cis),
        "n_below": sum(c.get("ci_high", 0.0) < 0 for c in cis),
        "n_seeds": len(ms),
    }


def _points(g: dict | None) -> str:
    if g is None:
        return "–"
    text = f"{100 * g['gain']:+.1f} [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"
    if g["n_seeds"] > 1:
        text += f" ({g['n_above']}↑ {g['n_below']}↓ of {g['n_seeds']})"
    return text


def _selection(rs, split) -> dict:
    """score -> method -> alpha -> mean risk, max risk, mean coverage, seeds accepting none."""
    out: dict = {}
    for r in rs:
        sel = _blocks(r).get(split, {}).get("selection")
        if not sel:
            continue
        for score, entry in sel["scores"].items():
            for method in sel["methods"]:
                for alpha in sel["alphas"]:
                    e = _alpha_entry(entry[method], float(alpha))
                    slot = out.setdefault(score, {}).setdefault(method, {})
                    slot.setdefault(float(alpha), []).append(e)
    return {
        score: {
            method: {
                a: {
                    # the risk among accepted pairs, over the seeds that accepted any
                    "risk": float(np.mean([e["risk"] for e in es if not e.get("accepted_none")]))
                    if not all(e.get("accepted_none") for e in es)
                    else 0.0,
                    "max_risk": float(np.max([e["risk"] for e in es])),
                    "coverage": float(np.mean([e["coverage"] for e in es])),
                    "n_none": sum(bool(e.get("accepted_none")) for e in es),
                    "n_seeds": len(es),
                }
                for a, es in per.items()
            }
            for method, per in methods.items()
        }
        for score, methods in out.items()
    }


def posthoc_targets(
    runs: list[tuple[Path, dict]],
    *,
    min_gain: float = 0.01,
    slack: float = 0.01,
    coverage_ratio: float = 1.2,
    min_auroc: float = 0.7,
) -> dict[tuple[str, str], dict]:
    """The post-hoc targets per (backbone, calibrator); see the module docstring."""
    out = {}
    for key, rs in _groups(runs).items():
        sets = _sets(rs)
        row: dict = {"n_seeds": len(rs)}
        # (a) lwr on any set
        lwr = {s: _gain(rs, s, "lwr") for s in sets}
        hits = [
            s
            for s, g in lwr.items()
            if g is not None and g["gain"] >= min_gain and g["n_above"] == g["n_seeds"]
        ]
        best = max(
            (s for s in lwr if lwr[s] is not None), key=lambda s: lwr[s]["gain"], default=None
        )
        row["a"] = bool(hits) if best is not None else None
        row["a_sets"] = hits
        row["a_best"] = (best, lwr[best]) if best is not None else None
        # (b) selection on the test split, per method (ltt, conformal)
        sel = _selection(rs, "test")
        if sel:
            per_method = {}
            for method in next(iter(sel.values())):
                entries = [
                    (a, score, e) for score, m in sel.items() for a, e in m.get(method, {}).items()
                ]
                worst = max(entries, key=lambda t: t[2]["risk"] - t[0])
                margin = sel.get("margin", {}).get(method, {}).get(0.2)
                others = {
                    sc: m[method][0.2]["coverage"]
                    for sc, m in sel.items()
                    if sc != "margin" and 0.2 in m.get(method, {})
                }
                best_score = max(others, key=others.get) if others else None
                ratio = None
                if margin is not None and best_score is not None and margin["coverage"] > 0:
                    ratio = others[best_score] / margin["coverage"]
                risk_ok = all(e["risk"] <= a + slack for a, _, e in entries)
                per_method[method] = {
                    "risk_ok": risk_ok,
                    "worst": (worst[1], worst[0], worst[2]["risk"]),
                    "best_score": best_score,
                    "best_coverage": None if best_score is None else others[best_score],
                    "margin_coverage": None if margin is None else margin["coverage"],
                    "ratio": ratio,
                    "met": risk_ok and ratio is not None and ratio >= coverage_ratio,
                }
            row["b_methods"] = per_method
            row["b"] = any(v["met"] for v in per_method.values())
        else:
            row["b"] = None
        # (d) OOD flags
        flags: dict[str, dict[str, float]] = {}
        for s in sets[1:]:
            vals = [_blocks(r)[s].get("ood_flags") for r in rs if s in _blocks(r)]
            vals = [v for v in vals if v]
            if vals:
                flags[s] = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]}
        maha = [s for s, f in flags.items() if f.get("mahalanobis", 0.0) >= min_auroc]
        row["d"] = (len(maha) >= 2) if flags else None
        row["d_sets"] = maha
        row["flags"] = flags
        # (e) the choosing guard
        per_set = {}
        for s in sets:
            scs = [_blocks(r)[s].get("step_choice") for r in rs if s in _blocks(r)]
            scs = [sc for sc in scs if sc]
            if not scs:
                continue
            folds = [f for sc in scs for f in sc["folds"]]
            per_set[s] = {
                "n_worse": sum(f["significantly_worse"] for f in folds),
                "n_folds": len(folds),
                "steps": sorted({f["step"] for f in folds}),
                "chosen": float(np.mean([sc["chosen_accuracy"] for sc in scs])),
                "base": float(np.mean([sc["fixed_accuracy"]["base"] for sc in scs])),
                "best_fixed": max(
                    scs[0]["fixed_accuracy"],
                    key=lambda k: np.mean([sc["fixed_accuracy"][k] for sc in scs]),
                ),
                "fixed": {
                    k: float(np.mean([sc["fixed_accuracy"][k] for sc in scs]))
                    for k in scs[0]["fixed_accuracy"]
                },
            }
        if per_set:
            never_worse = all(v["n_worse"] == 0 for v in per_set.values())
            chosen_mean = float(np.mean([v["chosen"] for v in per_set.values()]))
            fixed_means = {
                k: float(np.mean([v["fixed"][k] for v in per_set.values()]))
                for k in next(iter(per_set.values()))["fixed"]
            }
            best_fixed = max(fixed_means, key=fixed_means.get)
            row["e_never_worse"] = never_worse
            row["e_chosen_mean"] = chosen_mean
            row["e_best_fixed"] = (best_fixed, fixed_means[best_fixed])
            row["e"] = never_worse and chosen_mean >= fixed_means[best_fixed] - 1e-12
            row["steps"] = per_set
        else:
            row["e"] = None
        out[key] = row
    return out


def _verdict(flag) -> str:
    return "–" if flag is None else ("met" if flag else "not met")


def posthoc_targets_table(runs: list[tuple[Path, dict]], **kwargs) -> str:
    """:func:`posthoc_targets` as a markdown table, one row per family and calibrator."""
    rows = []
    for (backbone, calibrator), t in posthoc_targets(runs, **kwargs).items():
        best = t.get("a_best")
        a_text = _verdict(t["a"]) + (
            f" (best: {best[0]}, {_points(best[1])} points)" if best else ""
        )
        b_text = _verdict(t["b"])
        for method, v in (t.get("b_methods") or {}).items():
            score, alpha, risk = v["worst"]
            b_text += (
                f"; {method}: risk ≤ α + 0.01 at every α "
                f"{'yes' if v['risk_ok'] else 'no'} (highest: {score} at α={alpha:g}, "
                f"{_fmt(risk)}), coverage at α=0.2 {v['best_score']} "
                f"{_fmt(v['best_coverage'])} / margin {_fmt(v['margin_coverage'])}"
                + ("" if v["ratio"] is None else f" = {v['ratio']:.2f}×")
            )
        d_text = _verdict(t["d"])
        if t["flags"]:
            d_text += (
                " (Mahalanobis: "
                + ", ".join(f"{s} {_fmt(f.get('mahalanobis'))}" for s, f in t["flags"].items())
                + ")"
            )
        e_text = _verdict(t["e"])
        if t["e"] is not None:
            name, acc = t["e_best_fixed"]
            e_text += (
                f" (never significantly worse: {'yes' if t['e_never_worse'] else 'no'}; "
                f"chosen {_fmt(t['e_chosen_mean'])} vs best fixed step {name} {_fmt(acc)}, "
                "mean over sets)"
            )
        rows.append([backbone, calibrator, str(t["n_seeds"]), a_text, b_text, d_text, e_text])
    header = [
        "backbone",
        "calibrator",
        "seeds",
        "(a) lwr ≥ +1 point, interval above 0",
        "(b) selection on the test split",
        "(d) Mahalanobis AUROC ≥ 0.7 on two sets",
        "(e) choosing guard",
    ]
    return markdown_table(header, rows)


def posthoc_tables(runs: list[tuple[Path, dict]]) -> str:
    """The post-hoc tools over each family's seeds: length debiasing and the pessimistic
    reward against the base, pair selection, out-of-distribution flags, the choosing
    guard. Empty when no run has post-hoc results."""
    groups = _groups(runs)
    if not groups:
        return ""
    parts: list[str] = []
    # length debiasing and the pessimistic reward
    rows = []
    for (backbone, calibrator), rs in groups.items():
        family = f"{backbone} ({calibrator})"
        for s in _sets(rs):
            lengths = [_blocks(r)[s].get("length") for r in rs if s in _blocks(r)]
            lengths = [x for x in lengths if x]
            base = [_blocks(r)[s]["methods"]["base"]["accuracy"] for r in rs if s in _blocks(r)]
            rows.append(
                [
                    family,
                    s,
                    _fmt(lengths[0]["chosen_longer"]) if lengths else "–",
                    _fmt(lengths[0]["reward_spearman"]) if lengths else "–",
                    _fmt(float(np.mean(base))),
                    *(_points(_gain(rs, s, m)) for m in DEBIAS_METHODS),
                ]
            )
    header = [
        "family",
        "set",
        "chosen is longer",
        "Spearman(base, length)",
        "base acc",
        *(f"{m} − base, points [interval]" for m in DEBIAS_METHODS),
    ]
    parts += [
        "Length debiasing and the pessimistic reward against the base reward (points of "
        "pairwise accuracy; the mean over seeds of each seed's paired-bootstrap 95 % "
        "interval; ↑/↓: seeds whose interval lies above / below 0):",
        "",
        markdown_table(header, rows),
        "",
    ]
    # pair selection
    rows = []
    alphas: list[float] = []
    for (backbone, calibrator), rs in groups.items():
        family = f"{backbone} ({calibrator})"
        for s in _sets(rs):
            sel = _selection(rs, s)
            for score, methods in sel.items():
                for method, per in methods.items():
                    alphas = sorted(per)
                    cells = []
                    for a in alphas:
                        e = per[a]
                        cell = f"{_fmt(e['risk'])} / {_fmt(e['coverage'])}"
                        if e["n_none"] == e["n_seeds"]:
                            cell = "accepts none"
                        elif e["n_none"]:
                            cell += f" ({e['n_none']} of {e['n_seeds']} accept none)"
                        cells.append(cell)
                    rows.append([family, s, score, method, *cells])
    if rows:
        parts += [
            "Pair selection: realised risk / coverage (the risk among accepted pairs, "
            "averaged over the seeds that accepted any; the coverage over all seeds), "
            "calibrated on a "
            "seeded half of the RMB test split's prompts and scored on the other half "
            "(test) or on the whole out-of-distribution set; ltt: learn then test (risk ≤ α "
            "with probability 1 − δ, δ = 0.1), conformal: in expectation:",
            "",
            markdown_table(
                ["family", "set", "score", "method", *(f"α = {a:g}" for a in alphas)], rows
            ),
            "",
        ]
    # out-of-distribution flags
    targets = posthoc_targets(runs)
    rows = []
    names: list[str] = []
    for (backbone, calibrator), t in targets.items():
        family = f"{backbone} ({calibrator})"
        for s, f in t["flags"].items():
            names = sorted(f)
            rows.append([family, s, *(_fmt(f[k]) for k in names)])
    if rows:
        parts += [
            "Out-of-distribution AUROC (in: the RMB test split; out: each set; means over seeds):",
            "",
            markdown_table(["family", "set", *names], rows),
            "",
        ]
    # choosing guard
    rows = []
    for (backbone, calibrator), t in targets.items():
        family = f"{backbone} ({calibrator})"
        for s, v in t.get("steps", {}).items():
            rows.append(
                [
                    family,
                    s,
                    ", ".join(v["steps"]),
                    f"{v['n_worse']} of {v['n_folds']}",
                    _fmt(v["base"]),
                    _fmt(v["chosen"]),
                    f"{v['best_fixed']} {_fmt(v['fixed'][v['best_fixed']])}",
                ]
            )
    if rows:
        parts += [
            "Choosing guard: decided on a seeded half of each set's prompts (exact sign "
            "test against the base, Bonferroni over the candidates, confidence 0.8), "
            "scored on the other half, both ways round; accuracies are the held-out "
            "halves' means over folds and seeds:",
            "",
            markdown_table(
                [
                    "family",
                    "set",
                    "steps chosen",
                    "significantly below base",
                    "base",
                    "chosen",
                    "best fixed step",
                ],
                rows,
            ),
            "",
        ]
    parts += ["Targets of the post-hoc tools:", "", posthoc_targets_table(runs), ""]
    return "\n".join(parts)

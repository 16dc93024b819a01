"""Best-of-n over-optimisation with a gold reward model (``experiment=overoptimization``).

Coste et al.'s (2024) synthetic-gold protocol: policy samples of training prompts are
paired (pairs among the ``k`` samples of one prompt), labelled by the gold RM, and a share
of the labels (25 %) is flipped; every proxy RM is fitted on those pairs, on the proxy
backbone's frozen features. On held-out prompts with ``N`` samples each, best-of-n by
each proxy is scored by the gold RM for every ``n ≤ N`` (:func:`skebrm.metrics.best_of_n`,
unbiased, all ``N`` samples) and plotted against ``kl_best_of_n(n)``, with bootstrap
bands over prompts and the gold-selected oracle as the ceiling. A proxy over-optimises
when its gold curve peaks before ``n = N`` and falls.

Proxies: the base Bradley–Terry head; EBRM's refined reward (hybrid mode from the base
reward) and refined − λ·std (``ebrm_penalties``); the pessimistic reward
``pessimistic_b{β}``, the entropic risk ``−β log E[exp(−r / β)]`` of EBRM's grid
distribution, for each β of ``pessimistic_betas``
(:meth:`~skebrm.GridDistribution.entropic_risk`); the baselines of
``overoptimization.proxies`` (head ensembles mean / worst-case / uncertainty-weighted;
the Laplace Bayesian last layer's mean − λ·std; an entry set to null is skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from skebrm import metrics
from skebrm.experiments.bon_data import BestOfNContext, BestOfNData, folder_weights_fingerprint
from skebrm.experiments.report import markdown_table, write_json

__all__ = [
    "build_context",
    "fit_proxies",
    "format_overoptimization",
    "gold_labelled_pairs",
    "length_preference",
    "pessimistic_against_ensembles",
    "proxy_agreement",
    "run_overoptimization",
    "study_pairs",
    "summarise_curves",
]


def _build(node, **kwargs):
    from hydra.utils import instantiate

    return instantiate(node, _convert_="all", **kwargs)


def gold_labelled_pairs(
    features: np.ndarray,
    gold: np.ndarray,
    *,
    pairs_per_prompt: int,
    label_noise: float,
    random_state: int | None = 0,
) -> dict:
    """Pairs among the samples of each prompt, labelled by the gold reward, some flipped.

    Per prompt, ``pairs_per_prompt`` distinct pairs ``(a, b)`` of its samples are drawn;
    pairs whose two gold rewards are equal carry no preference and are dropped. The
    sample with the higher gold reward is chosen, then the labels of
    ``round(label_noise · n_pairs)`` random pairs are swapped.

    Returns
    -------
    dict
        ``X`` (rows chosen first: row ``2i`` chosen, ``2i + 1`` rejected), ``pair_id``,
        ``chosen``, ``prompt`` (per pair), ``flipped`` (bool per pair), ``n_ties``.
    """
    n_prompts, k, _ = features.shape
    if k < 2:
        raise ValueError(f"gold_labelled_pairs: need at least 2 samples per prompt, got {k}.")
    max_pairs = k * (k - 1) // 2
    if (
        not isinstance(pairs_per_prompt, (int, np.integer))
        or not 1 <= pairs_per_prompt <= max_pairs
    ):
        raise ValueError(
            f"gold_labelled_pairs: pairs_per_prompt must be an int in [1, {max_pairs}] for "
            f"{k} samples per prompt, got {pairs_per_prompt!r}."
        )
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(
            f"gold_labelled_pairs: label_noise must be in [0, 1], got {label_noise!r}."
        )
    rng = np.random.default_rng(random_state)
    all_pairs = np.array([(a, b) for a in range(k) for b in range(a + 1, k)])
    rows, prompt, n_ties = [], [], 0
    for i in range(n_prompts):
        for a, b in all_pairs[rng.choice(max_pairs, size=pairs_per_prompt, replace=False)]:
            if gold[i, a] == gold[i, b]:
                n_ties += 1
                continue
            win, lose = (a, b) if gold[i, a] > gold[i, b] else (b, a)
            rows.append((i, win, lose))
            prompt.append(i)
    rows = np.array(rows)
    flipped = np.zeros(len(rows), dtype=bool)
    flipped[rng.choice(len(rows), size=round(label_noise * len(rows)), replace=False)] = True
    rows[flipped, 1], rows[flipped, 2] = rows[flipped, 2], rows[flipped, 1].copy()
    X = np.stack([features[rows[:, 0], rows[:, 1]], features[rows[:, 0], rows[:, 2]]], axis=1)
    return {
        "X": X.reshape(2 * len(rows), -1),
        "pair_id": np.repeat(np.arange(len(rows)), 2),
        "chosen": np.tile(np.array([True, False]), len(rows)),
        "prompt": np.array(prompt),
        "flipped": flipped,
        "n_ties": n_ties,
    }


def study_pairs(cfg, data) -> dict:
    """The study's gold-labelled training pairs (Coste's protocol, :func:`gold_labelled_pairs`
    with ``overoptimization.pairs_per_prompt`` and ``label_noise``, seeded by ``seed``)."""
    ov = cfg.overoptimization
    return gold_labelled_pairs(
        data.train_features,
        data.train_gold,
        pairs_per_prompt=int(ov.pairs_per_prompt),
        label_noise=float(ov.label_noise),
        random_state=int(cfg.seed),
    )


def fit_proxies(cfg, pairs: dict, *, progress: bool = False) -> tuple[dict[str, Callable], object]:
    """Fit every proxy on the gold-labelled pairs.

    Returns
    -------
    scorers : dict of str to callable
        Proxy name -> ``score(X)``, a reward per row.
    calibrator : EnergyRewardCalibrator
        The fitted EBRM (for its fit history).
    """
    ov = cfg.overoptimization
    X, fit_kw = pairs["X"], {"pair_id": pairs["pair_id"], "chosen": pairs["chosen"]}
    head = _build(cfg.head).fit(X, **fit_kw)
    base_train = head.predict(X)
    scorers: dict[str, Callable] = {"base": head.predict}

    calibrator = _build(cfg.calibrator.estimator, verbose=int(progress))
    calibrator.fit(X, base_train, **fit_kw)

    def refined(Z):
        return calibrator.predict(Z, base_reward=head.predict(Z))

    scorers["ebrm"] = refined
    for lam in ov.ebrm_penalties or []:

        def penalised(Z, lam=float(lam)):
            return refined(Z) - lam * calibrator.score_uncertainty(Z)

        scorers[f"ebrm_minus_{float(lam):g}std"] = penalised
    for beta in ov.get("pessimistic_betas") or []:

        def pessimistic(Z, beta=float(beta)):
            return calibrator.predict_distribution(Z).entropic_risk(beta)

        scorers[f"pessimistic_b{float(beta):g}"] = pessimistic
    for name, node in (ov.proxies or {}).items():
        if node is None:
            continue
        est = _build(node.estimator).fit(X, base_train, **fit_kw)
        penalty = node.get("uncertainty_penalty")
        if penalty:

            def scored(Z, est=est, penalty=float(penalty)):
                return est.predict(Z) - penalty * est.score_uncertainty(Z)

            scorers[name] = scored
        else:
            scorers[name] = est.predict
    return scorers, calibrator


def proxy_agreement(
    proxy: np.ndarray, gold: np.ndarray, *, pairs_per_prompt: int, random_state: int | None = 0
) -> dict:
    """Pairwise accuracy of the proxy against gold preferences on held-out sample pairs."""
    n_prompts, n = gold.shape
    rng = np.random.default_rng(random_state)
    all_pairs = np.array([(a, b) for a in range(n) for b in range(a + 1, n)])
    m = min(pairs_per_prompt, len(all_pairs))
    correct = []
    for i in range(n_prompts):
        for a, b in all_pairs[rng.choice(len(all_pairs), size=m, replace=False)]:
            if gold[i, a] == gold[i, b]:
                continue
            w, lo = (a, b) if gold[i, a] > gold[i, b] else (b, a)
            correct.append(metrics.pairwise_correct([proxy[i, w]], [proxy[i, lo]])[0])
    correct = np.asarray(correct)
    boot = metrics.paired_bootstrap(correct, np.zeros_like(correct), random_state=random_state)
    return {
        "accuracy": float(correct.mean()),
        "ci_low": boot.ci_low,
        "ci_high": boot.ci_high,
        "n_pairs": int(len(correct)),
    }


def length_preference(
    reward: np.ndarray, n_tokens: np.ndarray, finished: np.ndarray | None = None
) -> dict:
    """How often a reward prefers the longer, and the cut-off, of two samples of one prompt.

    Over every pair of samples of one prompt (rows are prompts): ``longer`` is the share of
    the pairs of different lengths in which the reward is higher for the longer sample, and
    ``cut_off`` the share of the pairs of one cut-off sample (it reached the token budget)
    and one finished sample in which it is higher for the cut-off one. A tie in reward
    counts one half, so 0.5 is no preference.

    Parameters
    ----------
    reward, n_tokens : ndarray of shape (n_prompts, n_samples)
    finished : bool ndarray of shape (n_prompts, n_samples), optional
        Whether each sample ended before the token budget.

    Returns
    -------
    dict
        ``longer``, ``n_pairs_longer``, ``cut_off`` (``None`` without ``finished`` or
        without such pairs) and ``n_pairs_cut_off``.
    """
    reward = np.asarray(reward, dtype=float)
    n_tokens = np.asarray(n_tokens)
    if reward.ndim != 2 or n_tokens.shape != reward.shape:
        raise ValueError(
            "length_preference: reward and n_tokens must be 2-D arrays of one shape "
            f"(n_prompts, n_samples), got {reward.shape} and {n_tokens.shape}."
        )
    if finished is not None and np.shape(finished) != reward.shape:
        raise ValueError(
            f"length_preference: finished must have the shape of reward {reward.shape}, "
            f"got {np.shape(finished)}."
        )
    # wins[i, a, b]: 1 if the reward prefers sample a to sample b of prompt i, 1/2 if tied
    d = reward[:, :, None] - reward[:, None, :]
    wins = (d > 0) + 0.5 * (d == 0)
    longer = n_tokens[:, :, None] > n_tokens[:, None, :]
    out = {
        "longer": float(wins[longer].mean()) if longer.any() else None,
        "n_pairs_longer": int(longer.sum()),
        "cut_off": None,
        "n_pairs_cut_off": 0,
    }
    if finished is not None:
        cut = ~np.asarray(finished, dtype=bool)
        against = cut[:, :, None] & ~cut[:, None, :]
        if against.any():
            out["cut_off"] = float(wins[against].mean())
            out["n_pairs_cut_off"] = int(against.sum())
    return out


def summarise_curves(curves: dict[str, metrics.BestOfNCurve], reference: str = "base") -> dict:
    """Peak gold, KL at the peak, gold at n = N, and the peak's delay against ``reference``."""
    out = {}
    ref = curves[reference].peak() if reference in curves else None
    for name, c in curves.items():
        peak = c.peak()
        peak["drop_from_peak"] = peak["peak_gold"] - peak["final_gold"]
        peak["over_optimises"] = bool(peak["peak_n"] < peak["final_n"])
        if ref is not None:
            peak["peak_kl_minus_base"] = peak["peak_kl"] - ref["peak_kl"]
        out[name] = peak
    return out


ENSEMBLE_PROXIES = ("bt_ensemble_worst_case", "bt_ensemble_uncertainty_weighted")
"""The ensemble proxies the pessimistic reward is compared with."""


def pessimistic_against_ensembles(summary: dict) -> dict | None:
    """Peak gold of each ``pessimistic_b{β}`` proxy against the best ensemble proxy.

    Returns
    -------
    dict or None
        ``ensembles`` (name -> peak gold of the worst-case and uncertainty-weighted
        ensembles present), ``best_ensemble`` (its name), ``pessimistic`` (name -> peak
        gold, its difference to the best ensemble, and ``at_least_best_ensemble``), and
        ``best_pessimistic``; None where the run has no pessimistic or no ensemble proxy.
    """
    ens = {n: summary[n]["peak_gold"] for n in ENSEMBLE_PROXIES if n in summary}
    pess = {n: s["peak_gold"] for n, s in summary.items() if n.startswith("pessimistic_b")}
    if not ens or not pess:
        return None
    best_name = max(ens, key=ens.get)
    best = ens[best_name]
    return {
        "ensembles": ens,
        "best_ensemble": best_name,
        "pessimistic": {
            n: {
                "peak_gold": g,
                "minus_best_ensemble": g - best,
                "at_least_best_ensemble": bool(g >= best),
            }
            for n, g in pess.items()
        },
        "best_pessimistic": max(pess, key=pess.get),
    }


def format_overoptimization(results: dict) -> str:
    """The run's table (one row per proxy) and its settings, as Markdown."""
    src = results["source"]
    lines = [
        f"{results['n_eval_prompts']} held-out prompts × N = {results['n_eval_samples']} "
        f"samples; proxies fitted on {results['n_train_pairs']} gold-labelled pairs "
        f"({results['label_noise']:.0%} flipped) of {src.get('train_prompts')} training "
        f"prompts × {src.get('train_samples_per_prompt')} samples; proxy backbone "
        f"{results['proxy_backbone']}, gold RM {results['gold']}, calibrator "
        f"{results['calibrator']}.",
    ]
    gold = results.get("gold_report")
    if gold:
        per = ", ".join(
            f"{d['name']} {d['test_accuracy_after']:.3f} ({d['test_pairs']} pairs)"
            for d in gold["datasets"]
        )
        lines.append(
            f"Gold RM held-out pairwise accuracy: {gold['test_accuracy_after']:.3f} ({per})."
        )
    if "sampler" in src:
        s = src["sampler"]
        lines.append(
            f"Policy {s.get('policy')} ({s.get('backend')}), temperature "
            f"{s['settings']['temperature']:g}, {s['settings']['max_new_tokens']} new tokens; "
            f"mean {src.get('eval_mean_tokens', float('nan')):.0f} tokens per sample, "
            f"{src.get('eval_stopped', float('nan')):.0%} ended before the limit."
        )
    parts = [*lines, _table(results)]
    versus = results.get("pessimistic_vs_ensembles")
    if versus:
        best = versus["best_ensemble"]
        diffs = ", ".join(
            f"{name} {v['minus_best_ensemble']:+.3f}" for name, v in versus["pessimistic"].items()
        )
        parts.append(
            f"Pessimistic reward against the best ensemble proxy ({best}, peak gold "
            f"{versus['ensembles'][best]:.3f}), difference in peak gold: {diffs}."
        )
    return "\n\n".join(parts)


def _table(results: dict) -> str:
    rows = []
    for name, s in results["summary"].items():
        agree = results["agreement"].get(name)
        rows.append(
            [
                name,
                f"{s['peak_gold']:.3f}",
                str(s["peak_n"]),
                f"{s['peak_kl']:.2f}",
                f"{s['final_gold']:.3f}",
                f"{s['drop_from_peak']:.3f}",
                "–" if agree is None else f"{agree['accuracy']:.3f}",
            ]
        )
    header = ["proxy", "peak gold", "n at peak", "KL at peak", "gold at n=N", "drop", "agreement"]
    return markdown_table(header, rows)


def _gold_report(cfg) -> dict | None:
    """``finetune_report.json`` of the gold RM's folder, where the gold is such a folder."""
    import json

    folder = cfg.overoptimization.gold.model.get("name_or_path")
    path = Path(str(folder)).expanduser() / "finetune_report.json" if folder else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def build_context(cfg, progress: bool) -> BestOfNContext:
    """The :class:`BestOfNContext` of a composed config (sampler built, models lazy)."""
    from omegaconf import OmegaConf

    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    sampler = _build(cfg.sampler.policy) if "sampler" in cfg else None
    gold, backbone = cfg.overoptimization.gold, cfg.backbone
    gold_identity = {
        "name": gold.name,
        "model": plain(gold.model),
        "max_length": gold.max_length,
        "batch_size": gold.batch_size,
    }
    # a gold RM retrained into the same folder must not meet its old scores in the cache
    folder = Path(str(gold.model.get("name_or_path", ""))).expanduser()
    if folder.is_dir():
        gold_identity["weights_sha256"] = folder_weights_fingerprint(folder)
    return BestOfNContext(
        sampler=sampler,
        load_gold=lambda: _build(gold.model)(),
        load_proxy=lambda: _build(backbone.model),
        gold=gold_identity,
        proxy={
            "name": backbone.name,
            "model": plain(backbone.model),
            "max_length": backbone.max_length,
            "batch_size": backbone.batch_size,
        },
        cache_dir=cfg.cache_dir,
        seed=int(cfg.seed),
        device=cfg.device,
        verbose=progress,
    )


def run_overoptimization(
    cfg, output_dir: str | Path, *, echo: Callable[[str], None] = print, data: BestOfNData = None
) -> dict:
    """Run the study from a composed config; write ``results.json`` and ``best_of_n.png``.

    ``data`` replaces the configured source (tests pass tiny models' data this way).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from skebrm.experiments.pipeline import torch_threads

    with torch_threads(cfg.torch_threads):
        return _run(cfg, Path(output_dir), echo, data)


def _run(cfg, output_dir: Path, echo, data) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    ov, seed, progress = cfg.overoptimization, int(cfg.seed), bool(cfg.progress)
    timings = {}
    t0 = time.perf_counter()
    if data is None:
        data = _build(cfg.bon_data.source)(build_context(cfg, progress))
    timings["data"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    pairs = study_pairs(cfg, data)
    scorers, calibrator = fit_proxies(cfg, pairs, progress=progress)
    timings["fit"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    n_eval, n_samples, d = data.eval_features.shape
    flat = data.eval_features.reshape(n_eval * n_samples, d)
    ns = list(ov.ns) if ov.ns else list(range(1, n_samples + 1))
    gold = data.eval_gold
    boot = {"n_resamples": int(ov.n_bootstrap), "random_state": seed}
    scores = {
        name: np.asarray(f(flat), float).reshape(n_eval, n_samples) for name, f in scorers.items()
    }
    curves = {name: metrics.best_of_n_curve(s, gold, ns, **boot) for name, s in scores.items()}
    curves["oracle"] = metrics.best_of_n_curve(gold, gold, ns, **boot)
    agreement = {
        name: proxy_agreement(
            s, gold, pairs_per_prompt=int(ov.eval_pairs_per_prompt), random_state=seed
        )
        for name, s in scores.items()
    }
    timings["evaluation"] = round(time.perf_counter() - t0, 3)

    def curve_json(c: metrics.BestOfNCurve) -> dict:
        return {
            k: np.asarray(getattr(c, k)).tolist()
            for k in ("n", "kl", "mean", "ci_low", "ci_high", "std_error")
        }

    results = {
        "experiment": cfg.experiment_name,
        "task": "overoptimization",
        "seed": seed,
        "source": data.info,
        "proxy_backbone": cfg.backbone.name,
        "gold": ov.gold.name,
        "calibrator": cfg.calibrator.name,
        "label_noise": float(ov.label_noise),
        "n_train_pairs": int(len(pairs["prompt"])),
        "n_train_ties_dropped": int(pairs["n_ties"]),
        "n_eval_prompts": int(n_eval),
        "n_eval_samples": int(n_samples),
        "gold_mean": float(gold.mean()),
        "curves": {name: curve_json(c) for name, c in curves.items()},
        "proxy_self_curves": {
            name: metrics.best_of_n(s, s, ns).tolist() for name, s in scores.items()
        },
        "summary": summarise_curves(curves),
        "agreement": agreement,
        "calibrator_fit": {
            "n_pairs_dropped": int(getattr(calibrator, "n_pairs_dropped_", 0)),
            "history": getattr(calibrator, "history_", []),
        },
        "timings_s": timings,
    }
    versus = pessimistic_against_ensembles(results["summary"])
    if versus is not None:
        results["pessimistic_vs_ensembles"] = versus
    report = _gold_report(cfg)
    if report is not None:
        results["gold_report"] = report
    if cfg.evaluation.plots:
        metrics.plot_best_of_n(
            curves,
            output_dir / "best_of_n.png",
            title=f"Best-of-n, {n_eval} prompts × N = {n_samples} "
            f"({results['label_noise']:.0%} of training labels flipped)",
        )
        results["plots"] = ["best_of_n.png"]
    write_json(results, output_dir / "results.json")
    echo(format_overoptimization(results))
    echo(f"results: {output_dir / 'results.json'}")
    return results

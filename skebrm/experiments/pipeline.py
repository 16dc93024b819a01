"""The experiment pipeline, from a composed Hydra config to ``results.json`` and plots.

load pairs → embed (cached) → split by prompt → (label noise) → base reward → fit the
calibrator and the baselines → score every method on the test split and on the
out-of-distribution sets → print a table, write ``results.json`` and PNG plots.

:func:`build` is the one place where config nodes with ``_target_`` become objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from skebrm import metrics
from skebrm.experiments.data import EmbeddedPairs, embed_pairs, flip_labels, split_pairs
from skebrm.experiments.report import format_table, write_json

__all__ = ["MethodOutput", "build", "evaluate", "run_experiment"]


def build(node, **kwargs):
    """Instantiate a config node that has a ``_target_`` (lists become plain lists)."""
    from hydra.utils import instantiate

    return instantiate(node, _convert_="all", **kwargs)


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if node is not None else None


@dataclass
class MethodOutput:
    """What a method produces on a set of pairs (rows chosen first).

    reward, uncertainty : ndarray of shape (2 * n_pairs,); uncertainty may be None.
    preference_probability : ndarray of shape (n_pairs,) or None
        ``P(chosen ≻ rejected)``.
    """

    reward: np.ndarray
    uncertainty: np.ndarray | None = None
    preference_probability: np.ndarray | None = None


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def load_data(data_cfg, cfg, *, progress: bool) -> EmbeddedPairs:
    """Build the data loader of ``data_cfg``; embed its pairs with ``cfg.backbone``."""
    loaded = build(data_cfg.loader)
    if isinstance(loaded, EmbeddedPairs):
        return loaded
    backbone = cfg.backbone
    return embed_pairs(
        list(loaded),
        lambda: build(backbone.model),
        identity={"name": backbone.name, "model": _plain(backbone.model)},
        cache_dir=cfg.cache_dir,
        max_length=backbone.max_length,
        batch_size=backbone.batch_size,
        device=cfg.device,
        verbose=progress,
    )


def _fit_kwargs(data: EmbeddedPairs) -> dict:
    return {"pair_id": data.pair_id, "chosen": data.chosen}


def _base_model(cfg, head_split: EmbeddedPairs) -> Callable[[EmbeddedPairs], MethodOutput]:
    """The base RM: the backbone's own reward, or a Bradley–Terry head on the head split."""
    if cfg.base_reward == "native":
        if head_split.rewards is None:
            raise ValueError(
                "base_reward='native' needs rewards from the backbone, but the data has none; "
                "use base_reward=head."
            )

        def native(data: EmbeddedPairs) -> MethodOutput:
            r = data.rewards.astype(np.float64)
            return MethodOutput(r, preference_probability=_sigmoid(r[0::2] - r[1::2]))

        return native
    if cfg.base_reward != "head":
        raise ValueError(f"base_reward must be 'head' or 'native', got {cfg.base_reward!r}.")
    head = build(cfg.head).fit(head_split.embeddings, **_fit_kwargs(head_split))

    def fitted(data: EmbeddedPairs) -> MethodOutput:
        r = head.predict(data.embeddings)
        return MethodOutput(r, preference_probability=_sigmoid(r[0::2] - r[1::2]))

    return fitted


def _ebrm_outputs(calibrator, data: EmbeddedPairs, base: np.ndarray, prefix: str) -> dict:
    """EBRM's three readings of ``p(r | e)``: hybrid mode, global mode and mean.

    Uncertainty and ``P(chosen ≻ rejected)`` come from the calibrator's own distribution
    (:meth:`~skebrm.GridDistribution.preference_probability`, the number
    ``calibrator.preference_probability`` gives), from one grid pass.
    """
    X = data.embeddings
    dist = calibrator.predict_distribution(X)
    u = dist.std()
    prob = dist[0::2].preference_probability(dist[1::2])
    return {
        prefix: MethodOutput(calibrator.predict(X, base_reward=base), u, prob),
        f"{prefix}_global": MethodOutput(dist.mode, u, prob),
        f"{prefix}_mean": MethodOutput(dist.mean(), u, prob),
    }


def evaluate(
    data: EmbeddedPairs,
    outputs: dict[str, MethodOutput],
    *,
    reference: str = "base",
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    abstention_fractions=(0.1, 0.2, 0.3),
    n_bins: int = 10,
    random_state: int | None = 0,
) -> dict:
    """Score every method on ``data`` (see :mod:`skebrm.metrics`).

    Per method: RewardBench-style accuracies, the paired-bootstrap difference to
    ``reference``, and where available the misorder AUROC of the pair uncertainty
    ``sqrt(u_c² + u_r²)`` (for the reference's errors and for the method's own),
    accuracy after abstention (of the method, and of the reference abstaining on this
    method's uncertainty), and the ECE of ``P(chosen ≻ rejected)``.
    """
    ref = outputs[reference].reward
    ref_c, ref_r = ref[0::2], ref[1::2]
    ref_correct = metrics.pairwise_correct(ref_c, ref_r)
    fractions = [0.0, *abstention_fractions]
    out: dict[str, dict] = {}
    for name, o in outputs.items():
        rc, rr = o.reward[0::2], o.reward[1::2]
        correct = metrics.pairwise_correct(rc, rr)
        res: dict = {"rewardbench": metrics.rewardbench_scores(rc, rr, data.subset, data.section)}
        res["accuracy"] = res["rewardbench"]["overall"]
        if name != reference:
            res["vs_" + reference] = metrics.paired_bootstrap(
                correct,
                ref_correct,
                n_resamples=n_bootstrap,
                confidence=confidence,
                random_state=random_state,
            )._asdict()
        if o.uncertainty is not None:
            pair_u = np.hypot(o.uncertainty[0::2], o.uncertainty[1::2])
            res["misorder_auroc_" + reference] = metrics.misorder_auroc(pair_u, ref_c, ref_r)
            res["misorder_auroc_self"] = metrics.misorder_auroc(pair_u, rc, rr)
            res["abstention"] = metrics.abstention_accuracy(pair_u, correct, fractions)
            res["abstention_" + reference] = metrics.abstention_accuracy(
                pair_u, ref_correct, fractions
            )
        if o.preference_probability is not None:
            p, y = metrics.preference_calibration_data(o.preference_probability)
            res["ece"] = metrics.expected_calibration_error(p, y, n_bins=n_bins)
            curve = metrics.reliability_curve(p, y, n_bins=n_bins)
            res["reliability"] = {k: np.asarray(v).tolist() for k, v in curve._asdict().items()}
        out[name] = res
    return out


def _plots(results: dict, output_dir: Path) -> list[str]:
    methods = results["test"]["methods"]
    # one line per model: the EBRM variants share one distribution
    shown = [n for n in methods if n not in ("ebrm_global", "ebrm_mean")]
    curves = {
        name: metrics.ReliabilityCurve(
            *(np.asarray(v, float) for v in methods[name]["reliability"].values())
        )
        for name in shown
        if "reliability" in methods[name]
    }
    written = []
    if curves:
        metrics.plot_reliability_diagram(curves, output_dir / "reliability.png")
        written.append("reliability.png")
    abst = {"base + EBRM uncertainty": methods["ebrm"]["abstention_base"]}
    abst.update({n: methods[n]["abstention"] for n in shown if "abstention" in methods[n]})
    if abst:
        metrics.plot_abstention(abst, output_dir / "abstention.png")
        written.append("abstention.png")
    return written


def run_experiment(cfg, output_dir: str | Path, *, echo: Callable[[str], None] = print) -> dict:
    """Run one experiment from a composed config; write results into ``output_dir``.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    import torch

    threads = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(int(cfg.torch_threads))
    try:
        return _run(cfg, Path(output_dir), echo)
    finally:
        torch.set_num_threads(threads)


def _run(cfg, output_dir: Path, echo: Callable[[str], None]) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    progress = bool(cfg.progress)
    seed = int(cfg.seed)
    ev = cfg.evaluation
    eval_kw = {
        "n_bootstrap": int(ev.n_bootstrap),
        "confidence": float(ev.confidence),
        "abstention_fractions": tuple(ev.abstention_fractions),
        "n_bins": int(ev.n_bins),
        "random_state": seed,
    }
    timings: dict[str, float] = {}
    stages = tqdm(total=5, desc="experiment", disable=not progress, leave=False)

    def stage(name: str):
        stages.set_postfix_str(name)
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 3)
        stages.update(1)

    stage("data")
    data = load_data(cfg.data, cfg, progress=progress)
    head_split, cal_split, test = split_pairs(data, list(cfg.split.fractions), random_state=seed)
    if cfg.label_noise:
        head_split = flip_labels(head_split, float(cfg.label_noise), random_state=seed)
        cal_split = flip_labels(cal_split, float(cfg.label_noise), random_state=seed + 1)
    splits = {"head": head_split, "calibrator": cal_split}
    done("data")

    stage("base")
    base = _base_model(cfg, head_split)
    done("base")

    stage("calibrator")
    fit_on = cfg.split.calibrator_fit_on
    if fit_on not in splits:
        raise ValueError(f"split.calibrator_fit_on must be 'head' or 'calibrator', got {fit_on!r}.")
    train = splits[fit_on]
    calibrator = build(cfg.calibrator.estimator, verbose=int(progress))
    calibrator.fit(train.embeddings, base(train).reward, **_fit_kwargs(train))
    done("calibrator")

    stage("baselines")
    baselines = {}
    for name, node in (cfg.baselines or {}).items():
        part = splits[node.fit_on]
        est = build(node.estimator)
        baselines[name] = est.fit(part.embeddings, base(part).reward, **_fit_kwargs(part))
    done("baselines")

    def all_outputs(d: EmbeddedPairs) -> dict[str, MethodOutput]:
        b = base(d)
        outs = {"base": b, **_ebrm_outputs(calibrator, d, b.reward, "ebrm")}
        for name, est in baselines.items():
            u = est.score_uncertainty(d.embeddings) if hasattr(est, "score_uncertainty") else None
            outs[name] = MethodOutput(est.predict(d.embeddings), u)
        return outs

    stage("evaluation")
    results: dict = {
        "experiment": cfg.experiment_name,
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
        "calibrator": cfg.calibrator.name,
        "base_reward": cfg.base_reward,
        "label_noise": float(cfg.label_noise),
        "calibrator_fit_on": fit_on,
        "filter_conflicts": bool(getattr(calibrator, "filter_conflicts", True)),
        "seed": seed,
        "n_pairs": {
            "head": head_split.n_pairs,
            "calibrator": cal_split.n_pairs,
            "test": test.n_pairs,
        },
        "calibrator_fit": {
            "n_pairs_dropped": int(getattr(calibrator, "n_pairs_dropped_", 0)),
            "history": getattr(calibrator, "history_", []),
        },
        "test": {"methods": evaluate(test, all_outputs(test), **eval_kw)},
        "ood": {},
    }
    for name, data_cfg in (cfg.ood or {}).items():
        ood = load_data(data_cfg, cfg, progress=progress)
        results["ood"][name] = {
            "n_pairs": ood.n_pairs,
            "methods": evaluate(ood, all_outputs(ood), **eval_kw),
        }
    done("evaluation")
    stages.close()
    results["timings_s"] = timings
    if cfg.evaluation.plots:
        results["plots"] = _plots(results, output_dir)
    write_json(results, output_dir / "results.json")
    echo(format_table(results))
    echo(f"results: {output_dir / 'results.json'}")
    return results

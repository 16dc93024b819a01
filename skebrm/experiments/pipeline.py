"""The experiment pipeline, from a composed Hydra config to ``results.json`` and plots.

load pairs → embed (cached) → split by prompt → (label noise) → base reward → fit the
calibrator and the baselines → score every method on the test split and on the
out-of-distribution sets (:mod:`skebrm.experiments.evaluation`) → print a table, write
``results.json`` and PNG plots.

:func:`build` is the one place where config nodes with ``_target_`` become objects.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from skebrm import metrics
from skebrm.experiments.data import (
    EmbeddedPairs,
    embed_pairs,
    flip_labels,
    label_noise_seed,
    split_pairs,
)
from skebrm.experiments.evaluation import (
    MethodOutput,
    base_margin_output,
    baseline_output,
    ebrm_outputs,
    evaluate,
    reward_output,
)
from skebrm.experiments.report import format_table, write_json

__all__ = ["MethodOutput", "build", "evaluate", "run_experiment"]


def build(node, **kwargs):
    """Instantiate a config node that has a ``_target_`` (lists become plain lists)."""
    from hydra.utils import instantiate

    return instantiate(node, _convert_="all", **kwargs)


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if node is not None else None


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
            return reward_output(data.rewards)

        return native
    if cfg.base_reward != "head":
        raise ValueError(f"base_reward must be 'head' or 'native', got {cfg.base_reward!r}.")
    head = build(cfg.head).fit(head_split.embeddings, **_fit_kwargs(head_split))

    def fitted(data: EmbeddedPairs) -> MethodOutput:
        return reward_output(head.predict(data.embeddings))

    return fitted


def _backbone_model(cfg) -> str:
    """Which weights the backbone loaded: the model folder or hub id when its config names
    one (``$SKEBRM_FINETUNED_RM`` resolved), else the loader's target."""
    model = cfg.backbone.model
    return str(model.get("name_or_path") or model.get("_target_"))


def _plots(results: dict, output_dir: Path) -> list[str]:
    methods = results["test"]["methods"]
    # one line per model: the EBRM variants share one distribution, and the base margin
    # has the base RM's probabilities
    shown = [n for n in methods if n not in ("ebrm_global", "ebrm_mean")]
    curves = {
        name: metrics.ReliabilityCurve(
            *(np.asarray(v, float) for v in methods[name]["reliability"].values())
        )
        for name in shown
        if "reliability" in methods[name] and name != "base_margin"
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
    with torch_threads(cfg.torch_threads):
        return _run(cfg, Path(output_dir), echo)


@contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` for the block, restored after (``None``: unchanged)."""
    import torch

    threads = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_target_guard(cfg, calibrator, base, ood_sets: dict, progress: bool) -> EmbeddedPairs:
    """Decide the calibrator's guard on the target set ``cfg.guard_target`` (a key of
    ``cfg.ood``): half of its prompts (seeded) are the guard pairs
    (:meth:`~skebrm.EnergyRewardCalibrator.fit_guard`); the other half is returned, to be
    scored in the set's place."""
    name = cfg.guard_target
    if name not in ood_sets:
        raise ValueError(
            f"guard_target must be null or one of the ood sets {sorted(ood_sets)}, got {name!r}."
        )
    if not hasattr(calibrator, "fit_guard"):
        raise ValueError(
            f"guard_target={name!r} needs a calibrator with fit_guard, got "
            f"{type(calibrator).__name__}."
        )
    guard_half, scored_half = split_pairs(
        load_data(ood_sets[name], cfg, progress=progress), [0.5, 0.5], random_state=int(cfg.seed)
    )
    calibrator.fit_guard(guard_half.embeddings, base(guard_half).reward, **_fit_kwargs(guard_half))
    return scored_half


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
        noise = float(cfg.label_noise)
        head_split = flip_labels(head_split, noise, random_state=label_noise_seed("head", seed))
        cal_split = flip_labels(cal_split, noise, random_state=label_noise_seed("calibrator", seed))
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
    # the calibrator's validation split (if any) holds out whole prompts
    _, prompt_codes = np.unique(train.prompt.astype(str), return_inverse=True)
    guard_target = cfg.get("guard_target")
    with warnings.catch_warnings():
        if guard_target is not None:  # fit_guard follows: the guard parameters take effect
            warnings.filterwarnings("ignore", ".*until fit_guard is called")
        calibrator.fit(
            train.embeddings,
            base(train).reward,
            **_fit_kwargs(train),
            groups=np.repeat(prompt_codes.reshape(-1), 2),
        )
    guard_validation = getattr(calibrator, "guard_scores_", None)
    ood_sets = dict(cfg.ood or {})
    target_half = None  # the half of the guard target that is scored
    if guard_target is not None:
        target_half = _fit_target_guard(cfg, calibrator, base, ood_sets, progress)
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
        outs = {"base": b, "base_margin": base_margin_output(b)}
        outs.update(ebrm_outputs(calibrator, d, b.reward, "ebrm"))
        for name, est in baselines.items():
            outs[name] = baseline_output(est, d.embeddings)
        return outs

    def scored(d: EmbeddedPairs) -> dict:
        block: dict = {"n_pairs": d.n_pairs}
        if d.disagreement is not None:
            block["n_pairs_with_votes"] = int(np.sum(~np.isnan(d.disagreement)))
            block["n_pairs_disagreement"] = int(np.nansum(d.disagreement))
        block["methods"] = evaluate(d, all_outputs(d), **eval_kw)
        return block

    stage("evaluation")
    results: dict = {
        "experiment": cfg.experiment_name,
        "backbone": cfg.backbone.name,
        "max_length": int(cfg.backbone.max_length),
        "backbone_model": _backbone_model(cfg),
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
            "refinement_helps": getattr(calibrator, "refinement_helps_", None),
            "guard": getattr(calibrator, "guard_scores_", None),
        },
        "test": scored(test),
        "ood": {},
    }
    if guard_target is not None:
        results["guard_target"] = guard_target
        results["calibrator_fit"]["guard_validation"] = guard_validation
    for name, data_cfg in ood_sets.items():
        if name == guard_target:
            results["ood"][name] = {**scored(target_half), "scored_half": True}
        else:
            results["ood"][name] = scored(load_data(data_cfg, cfg, progress=progress))
    done("evaluation")
    stages.close()
    results["timings_s"] = timings
    if cfg.evaluation.plots:
        results["plots"] = _plots(results, output_dir)
    write_json(results, output_dir / "results.json")
    echo(format_table(results))
    echo(f"results: {output_dir / 'results.json'}")
    return results

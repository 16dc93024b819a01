"""The experiment pipeline, from a composed Hydra config to ``results.json`` and plots.

load pairs → embed (cached) → split by prompt → (label noise) → base reward → fit the
calibrator and the baselines → score every method on the test split and on the
out-of-distribution sets (:mod:`skebrm.experiments.evaluation`) → print a table, write
``results.json`` and PNG plots.

The post-hoc tools of the ``posthoc`` config node are scored on the same sets:

* ``lwr``: the base reward length-debiased (:class:`~skebrm.LengthDebiaser`);
  ``ebrm+lwr``: EBRM's refined reward debiased the same way; ``lwr+ebrm``: debias, then
  refine: a second calibrator is fitted on the *debiased* training rewards and refines the
  debiased base reward (refining a debiased reward with a density fitted on the raw
  rewards would pull it back towards the length bias). ``posthoc.debias.mode``:
  ``transductive`` fits the curve on the very set being scored (as Huang et al. do),
  ``inductive`` fits it once on the calibrator's training split. Each set also reports
  how often its chosen response is the longer one and each method's Spearman
  correlation with the length.
* ``pessimistic``: the entropic risk of EBRM's grid distribution at ``posthoc.pessimistic.beta``.
* ``selection``: :class:`~skebrm.PairSelector` per confidence score, calibrated on a seeded
  half of the test split's prompts (the only labelled split no fit has seen: the head
  split fits the base RM and the calibrator split the calibrator), reported on the other
  half, and on each out-of-distribution set with the same in-distribution calibration.
* ``ood_flags``: in- (test split) versus out-of-distribution AUROC of the Mahalanobis
  distance (:class:`~skebrm.MahalanobisScorer` fitted on the head split's embeddings, the
  rows the base RM was trained on), EBRM's std, the Laplace head's posterior std and the
  negative base margin.
* ``step_choice``: the choosing guard (:func:`~skebrm.steps.choose_step` over
  ``posthoc.step_choice.candidates``) decided on a seeded half of each set's prompts and
  scored on the other half, both ways round
  (:func:`~skebrm.experiments.evaluation.step_choice_report`).

:func:`build` is the one place where config nodes with ``_target_`` become objects.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sklearn.base import clone
from tqdm.auto import tqdm

from skebrm import metrics
from skebrm.experiments.data import (
    EmbeddedPairs,
    embed_pairs,
    flip_labels,
    label_noise_seed,
    split_pair_indices,
    split_pairs,
)
from skebrm.experiments.evaluation import (
    MethodOutput,
    base_margin_output,
    baseline_output,
    debiased_output,
    ebrm_outputs,
    evaluate,
    length_statistics,
    ood_flag_aurocs,
    ood_flag_scores,
    pessimistic_output,
    reward_output,
    selection_confidences,
    selection_report,
    step_choice_report,
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
    shown = [n for n in methods if n not in ("ebrm_global", "ebrm_mean", *POSTHOC_METHODS)]
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
    selection = results["test"].get("selection")
    if selection:
        _plot_selection(selection, output_dir / "selection.png")
        written.append("selection.png")
    return written


POSTHOC_METHODS = ("lwr", "ebrm+lwr", "lwr+ebrm", "pessimistic")
"""The post-hoc methods' names in the results (left out of the reliability plot)."""


def _plot_selection(selection: dict, path: Path) -> None:
    """Risk against coverage on the scored half of the test split, one line per score,
    with the learn-then-test selector's (coverage, risk) at each alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = selection["scores"]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for i, (name, block) in enumerate(scores.items()):
        colour = f"C{i}"
        curve = block["curve"]
        ax.plot(curve["coverage"], curve["risk"], color=colour, label=name)
        for method, marker in (("ltt", "o"), ("conformal", "s")):
            points = block.get(method, {})
            xs = [p["coverage"] for p in points.values() if not p["accepted_none"]]
            ys = [p["risk"] for p in points.values() if not p["accepted_none"]]
            ax.scatter(xs, ys, color=colour, marker=marker, s=22, zorder=3)
    for alpha in selection["alphas"]:
        ax.axhline(float(alpha), color="grey", lw=0.6, ls=":")
    ax.set_xlabel("coverage (share of pairs accepted)")
    ax.set_ylabel("misorder rate among accepted pairs")
    ax.set_title("Pair selection on the test split (o: learn then test, □: conformal)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


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


def _fit_calibrator(cfg, train: EmbeddedPairs, reward: np.ndarray, progress: bool):
    """A new calibrator from ``cfg.calibrator``, fitted on ``train`` with ``reward``."""
    calibrator = build(cfg.calibrator.estimator, verbose=int(progress))
    # the calibrator's validation split (if any) holds out whole prompts
    _, prompt_codes = np.unique(train.prompt.astype(str), return_inverse=True)
    with warnings.catch_warnings():
        if cfg.get("guard_target") is not None:  # fit_guard follows: the guard takes effect
            warnings.filterwarnings("ignore", ".*until fit_guard is called")
        calibrator.fit(
            train.embeddings,
            reward,
            **_fit_kwargs(train),
            groups=np.repeat(prompt_codes.reshape(-1), 2),
        )
    return calibrator


def _posthoc(cfg):
    """The ``posthoc`` node (everything off where a config has none)."""
    node = cfg.get("posthoc")
    if node is None:
        from omegaconf import OmegaConf

        node = OmegaConf.create(
            {
                "debias": {"enabled": False},
                "pessimistic": {"enabled": False},
                "selection": {"enabled": False},
                "ood_flags": {"enabled": False},
                "step_choice": {"enabled": False},
            }
        )
    return node


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
    stages = tqdm(total=6, desc="experiment", disable=not progress, leave=False)

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
    guard_target = cfg.get("guard_target")
    calibrator = _fit_calibrator(cfg, train, base(train).reward, progress)
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

    stage("posthoc")
    ph = _posthoc(cfg)
    posthoc_info: dict = {}
    # length debiasing: one LengthDebiaser's parameters; inductive mode fits it on train
    debias = None
    if ph.debias.enabled:
        if train.feature(ph.debias.feature) is None:
            posthoc_info["debias"] = {"skipped": "the data has no response lengths"}
        else:
            from skebrm.debias import LengthDebiaser

            debias = {
                "mode": str(ph.debias.mode),
                "feature": str(ph.debias.feature),
                "params": LengthDebiaser(
                    frac=float(ph.debias.frac),
                    alpha=float(ph.debias.alpha),
                    feature="markdown" if ph.debias.feature == "markdown" else "chars",
                ),
            }
            if debias["mode"] not in ("transductive", "inductive"):
                raise ValueError(
                    "posthoc.debias.mode must be 'transductive' or 'inductive', got "
                    f"{debias['mode']!r}."
                )
            train_feature = train.feature(debias["feature"])
            debias["on_train"] = clone(debias["params"]).fit(train_feature, base(train).reward)
            if debias["mode"] == "inductive":
                refined_train = calibrator.predict(train.embeddings, base_reward=base(train).reward)
                debias["refined_on_train"] = clone(debias["params"]).fit(
                    train_feature, refined_train
                )
            posthoc_info["debias"] = {
                "mode": debias["mode"],
                "feature": debias["feature"],
                "frac": float(ph.debias.frac),
                "alpha": float(ph.debias.alpha),
                "fitted_on": fit_on if debias["mode"] == "inductive" else "each scored set",
            }

    def lwr(d: EmbeddedPairs, reward: np.ndarray, fitted=None) -> MethodOutput:
        """``reward`` debiased: by a fit on ``d`` (transductive) or by ``fitted``."""
        feature = d.feature(debias["feature"])
        if debias["mode"] == "inductive":
            return debiased_output(reward, feature, fitted, mode="inductive")
        return debiased_output(reward, feature, debias["params"])

    calibrator_lwr = None
    if debias is not None and ph.debias.refine:

        def lwr_base(d: EmbeddedPairs) -> MethodOutput:
            return lwr(d, base(d).reward, debias["on_train"])

        # debias then refine: the calibrator learns p(r | e) of the debiased rewards; the
        # training rewards are debiased by the curve fitted on the training split itself
        calibrator_lwr = _fit_calibrator(
            cfg, train, debias["on_train"].transform(train_feature, base(train).reward), progress
        )
        if guard_target is not None:
            _fit_target_guard(cfg, calibrator_lwr, lwr_base, ood_sets, progress)
        posthoc_info["debias"]["refine"] = "calibrator refitted on the debiased training rewards"
    beta = None
    if ph.pessimistic.enabled:
        beta = ph.pessimistic.beta
        beta = float(np.std(base(train).reward)) if beta is None else float(beta)
        posthoc_info["pessimistic"] = {
            "beta": beta,
            "beta_source": "configured"
            if ph.pessimistic.beta is not None
            else f"std of the base reward on the {fit_on} split",
        }
    choose = None
    step_node = ph.get("step_choice")
    if step_node is not None and step_node.enabled:
        choose = {
            "candidates": [str(c) for c in step_node.candidates],
            "confidence": float(step_node.confidence),
        }
        posthoc_info["step_choice"] = {
            **choose,
            "decided_on": "a seeded half of each set's prompts, scored on the other half "
            "(both ways round)",
        }
    scorer = None
    if ph.ood_flags.enabled:
        from skebrm.ood import MahalanobisScorer

        scorer = MahalanobisScorer().fit(head_split.embeddings)
        posthoc_info["ood_flags"] = {"mahalanobis_fitted_on": "head", "in_distribution": "test"}
    done("posthoc")

    def all_outputs(d: EmbeddedPairs) -> dict[str, MethodOutput]:
        b = base(d)
        outs = {"base": b, "base_margin": base_margin_output(b)}
        dist = calibrator.predict_distribution(d.embeddings)
        outs.update(ebrm_outputs(calibrator, d, b.reward, "ebrm", dist=dist))
        for name, est in baselines.items():
            outs[name] = baseline_output(est, d.embeddings)
        if debias is not None:
            outs["lwr"] = lwr(d, b.reward, debias["on_train"])
            outs["ebrm+lwr"] = lwr(d, outs["ebrm"].reward, debias.get("refined_on_train"))
            if calibrator_lwr is not None:
                refined = calibrator_lwr.predict(d.embeddings, base_reward=outs["lwr"].reward)
                outs["lwr+ebrm"] = reward_output(refined)
        if beta is not None:
            outs["pessimistic"] = pessimistic_output(dist, beta)
        return outs

    def scored(d: EmbeddedPairs, outs: dict[str, MethodOutput] | None = None) -> dict:
        block: dict = {"n_pairs": d.n_pairs}
        if d.disagreement is not None:
            block["n_pairs_with_votes"] = int(np.sum(~np.isnan(d.disagreement)))
            block["n_pairs_disagreement"] = int(np.nansum(d.disagreement))
        outs = all_outputs(d) if outs is None else outs
        block["methods"] = evaluate(d, outs, **eval_kw)
        if choose is not None:
            halves = split_pair_indices(d, [0.5, 0.5], random_state=seed)
            block["step_choice"] = step_choice_report(
                outs,
                (halves[0], halves[1]),
                candidates=choose["candidates"],
                confidence=choose["confidence"],
                n_bootstrap=eval_kw["n_bootstrap"],
                interval=eval_kw["confidence"],
                random_state=seed,
            )
        if debias is not None:
            block["length"] = {
                "feature": debias["feature"],
                **length_statistics(d.feature(debias["feature"]), outs["base"].reward),
            }
        return block

    # pair selection: calibrated on a seeded half of the test split's prompts
    select = None
    if ph.selection.enabled:
        sel_cal, sel_eval = split_pair_indices(test, [0.5, 0.5], random_state=seed)
        select = {
            "alphas": [float(a) for a in ph.selection.alphas],
            "methods": [str(m) for m in ph.selection.methods],
            "delta": float(ph.selection.delta),
        }

    def selection_block(conf: dict, pairs=None) -> dict:
        scored_conf = (
            conf if pairs is None else {k: (c[pairs], y[pairs]) for k, (c, y) in conf.items()}
        )
        return {
            "calibration": "a seeded half of the test split's prompts",
            "n_calibration": int(len(sel_cal)),
            "n_scored": int(len(next(iter(scored_conf.values()))[0])),
            **select,
            "scores": selection_report(
                calibration,
                scored_conf,
                alphas=select["alphas"],
                methods=select["methods"],
                delta=select["delta"],
            ),
        }

    flags_in = None

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
        "ood": {},
    }
    test_outputs = all_outputs(test)
    results["test"] = scored(test, test_outputs)
    if select is not None:
        test_conf = selection_confidences(test_outputs)
        calibration = {k: (c[sel_cal], y[sel_cal]) for k, (c, y) in test_conf.items()}
        results["test"]["selection"] = selection_block(test_conf, sel_eval)
    if scorer is not None:
        flags_in = ood_flag_scores(test_outputs, test.embeddings, scorer)
    if posthoc_info:
        results["posthoc"] = posthoc_info
    if guard_target is not None:
        results["guard_target"] = guard_target
        results["calibrator_fit"]["guard_validation"] = guard_validation
    for name, data_cfg in ood_sets.items():
        d = target_half if name == guard_target else load_data(data_cfg, cfg, progress=progress)
        outs = all_outputs(d)
        block = scored(d, outs)
        if name == guard_target:
            block["scored_half"] = True
        if select is not None:
            block["selection"] = selection_block(selection_confidences(outs))
        if flags_in is not None:
            block["ood_flags"] = ood_flag_aurocs(
                flags_in, ood_flag_scores(outs, d.embeddings, scorer)
            )
        results["ood"][name] = block
    done("evaluation")
    stages.close()
    results["timings_s"] = timings
    if cfg.evaluation.plots:
        results["plots"] = _plots(results, output_dir)
    write_json(results, output_dir / "results.json")
    echo(format_table(results))
    echo(f"results: {output_dir / 'results.json'}")
    return results

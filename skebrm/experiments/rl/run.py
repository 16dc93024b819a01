"""GRPO against a proxy RM, tracked by a gold RM (``experiment=rl_overoptimization``).

One run trains the policy (``policy`` config group) with TRL's ``GRPOTrainer`` against one
proxy (``rl.proxy``) at one KL coefficient (``rl.beta``):

1. the best-of-n study's data (``bon_data``: policy samples of its training prompts, gold
   rewards, proxy features, all through the caches) and its Coste protocol
   (:func:`~skebrm.experiments.overoptimization.gold_labelled_pairs`, 25 % of labels
   flipped) fit every proxy (:func:`~skebrm.experiments.overoptimization.fit_proxies`);
2. every proxy's agreement with the gold RM on pairs of held-out policy samples is
   written to ``run.json``; below ``rl.agreement.min`` the run stops
   (``rl.agreement.action: error``) or warns (``warn``);
3. GRPO on the training prompts, with :class:`~skebrm.experiments.rl.tracking.GoldTracker`
   scoring the first ``rl.n_eval_prompts`` held-out prompts every ``rl.tracking.every``
   steps into ``tracking.jsonl``;
4. ``results.json`` (:func:`~skebrm.experiments.rl.report.summarise_run`) and
   ``rl_curves.png``.

The run folder is named by the proxy and β (``hydra.run.dir`` in the experiment config),
so the same command resumes a stopped run from its last checkpoint
(``<run>/checkpoints``, TRL's ``save_steps``); a run whose checkpoint has reached
``max_steps`` only rebuilds its report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from skebrm.experiments.rl.report import (
    RUN_FILE,
    TRACKING_FILE,
    format_rl_overoptimization,
    plot_rl_overoptimization,
    summarise_run,
)

__all__ = [
    "ProxyAgreementWarning",
    "build_tiny_policy",
    "fit_rl_proxies",
    "grpo_config",
    "load_policy",
    "run_rl_overoptimization",
    "save_tiny_policy",
]

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class ProxyAgreementWarning(UserWarning):
    """A proxy agrees with the gold RM on fewer held-out pairs than ``rl.agreement.min``."""


def _build(node, **kwargs):
    from hydra.utils import instantiate

    return instantiate(node, _convert_="all", **kwargs)


def build_tiny_policy(seed: int = 0):
    """A tiny random Llama causal LM and the offline MiniLM tokenizer with a chat template.

    For tests and CI: it generates noise, but every code path of a real policy runs.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from skebrm.experiments.backbones import offline_tokenizer

    tok = offline_tokenizer()
    tok.eos_token = "[SEP]"
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.model_input_names = ["input_ids", "attention_mask"]
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.cls_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval(), tok


def save_tiny_policy(folder: str, *, seed: int = 0) -> Path:
    """Save :func:`build_tiny_policy` to ``folder`` (once; a complete folder is kept)."""
    from skebrm._io import staged_directory

    folder = Path(folder).expanduser()
    if (folder / "config.json").is_file():
        return folder
    model, tok = build_tiny_policy(seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return folder


def load_policy(name_or_path: str, *, dtype: str = "float32"):
    """The policy and its tokenizer (``"smollm2"``: offline SmolLM2-135M-Instruct), with a
    pad token (the end-of-sequence token where the tokenizer has none) and no token types."""
    from skebrm.sampling import load_causal_lm

    model, tok = load_causal_lm(name_or_path, dtype=dtype)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # a causal LM takes no token types (a BERT-style tokenizer would produce them)
    tok.model_input_names = [n for n in tok.model_input_names if n != "token_type_ids"]
    return model, tok


def fit_rl_proxies(cfg, data, *, progress: bool = False) -> tuple[dict[str, Callable], dict]:
    """Fit every proxy on the Coste-protocol pairs; their agreement on held-out pairs.

    Returns
    -------
    scorers : dict of str to callable
        Proxy name -> ``score(embeddings)``.
    agreement : dict of str to dict
        :func:`~skebrm.experiments.overoptimization.proxy_agreement` of each proxy, and
        where the data has the samples' lengths (policy samples) its
        :func:`~skebrm.experiments.overoptimization.length_preference` on the same held-out
        samples under ``length_preference``.
    """
    from skebrm.experiments.overoptimization import (
        fit_proxies,
        length_preference,
        proxy_agreement,
        study_pairs,
    )

    ov, seed = cfg.overoptimization, int(cfg.seed)
    scorers, _ = fit_proxies(cfg, study_pairs(cfg, data), progress=progress)
    n_eval, n, d = data.eval_features.shape
    flat = data.eval_features.reshape(n_eval * n, d)
    agreement = {}
    for name, f in scorers.items():
        scores = np.asarray(f(flat), float).reshape(n_eval, n)
        agreement[name] = proxy_agreement(
            scores,
            data.eval_gold,
            pairs_per_prompt=int(ov.eval_pairs_per_prompt),
            random_state=seed,
        )
        if data.eval_n_tokens is not None:
            agreement[name]["length_preference"] = length_preference(
                scores, data.eval_n_tokens, data.eval_finished
            )
    return scorers, agreement


def _check_agreement(rl, agreement: dict, echo) -> None:
    proxy, gate = rl.proxy, rl.agreement
    acc = agreement[proxy]["accuracy"]
    if acc >= float(gate.min):
        return
    msg = (
        f"run_rl_overoptimization: proxy {proxy!r} agrees with the gold RM on {acc:.3f} of "
        f"held-out policy pairs, below rl.agreement.min={float(gate.min):g}; a proxy that "
        "barely tracks the gold cannot show over-optimisation. Raise the agreement (more "
        "gold-labelled pairs: overoptimization.pairs_per_prompt, more samples per prompt: "
        "bon_data.source.n_train_samples, or a fine-tuned proxy backbone), or set "
        "rl.agreement.action=warn to run anyway."
    )
    if gate.action == "error":
        raise ValueError(msg)
    if gate.action != "warn":
        raise ValueError(
            f"run_rl_overoptimization: rl.agreement.action must be 'error' or 'warn', got "
            f"{gate.action!r}."
        )
    warnings.warn(msg, ProxyAgreementWarning, stacklevel=3)
    echo(f"warning: {msg}")


def _prompts(cfg) -> tuple[list[str], list[str]]:
    from skebrm.experiments.bon_data import select_prompts

    src = cfg.bon_data.source
    if "prompt_files" not in src:
        raise ValueError(
            "run_rl_overoptimization: bon_data must be a policy source with prompt_files "
            f"(bon_data=policy), got bon_data={cfg.bon_data.name!r}; the RL study trains on "
            "prompts."
        )
    train, held_out = select_prompts(
        src.prompt_files,
        n_train=int(src.n_train_prompts),
        n_eval=int(src.n_eval_prompts),
        max_prompt_chars=int(src.max_prompt_chars),
        random_state=int(cfg.seed),
    )
    rl = cfg.rl
    n_eval = int(rl.n_eval_prompts)
    if n_eval > len(held_out):
        raise ValueError(
            f"run_rl_overoptimization: rl.n_eval_prompts={n_eval} but the best-of-n study "
            f"holds out {len(held_out)} prompts; raise bon_data.source.n_eval_prompts."
        )
    if rl.get("n_train_prompts"):
        train = train[: int(rl.n_train_prompts)]
    return train, held_out[:n_eval]


def _text_reward(load: Callable, *, max_length: int, batch_size: int, device, scorer, name):
    from skebrm.experiments.rl.rewards import TextReward
    from skebrm.extraction import EmbeddingExtractor

    model, tok = load()
    extractor = EmbeddingExtractor(
        model, tok, max_length=int(max_length), batch_size=int(batch_size), device=device
    ).fit()
    return TextReward(extractor, scorer, name=name)


def grpo_config(config_class, settings: dict, **kwargs):
    """``GRPOConfig(**settings, **kwargs)``, where ``gradient_checkpointing`` is passed by
    its newer name ``activation_checkpointing`` when the installed transformers has it."""
    import dataclasses

    settings = dict(settings)
    names = {f.name for f in dataclasses.fields(config_class)}
    if "gradient_checkpointing" in settings and "activation_checkpointing" in names:
        settings["activation_checkpointing"] = settings.pop("gradient_checkpointing")
    return config_class(**settings, **kwargs)


def _completed(checkpoint: str | None, max_steps: int) -> bool:
    import json

    if checkpoint is None:
        return False
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0)) >= max_steps


def run_rl_overoptimization(
    cfg,
    output_dir: str | Path,
    *,
    echo: Callable[[str], None] = print,
    callbacks: Sequence = (),
) -> dict:
    """Run (or resume) one GRPO run from a composed config; see the module docstring.

    ``callbacks`` are extra ``TrainerCallback`` objects (tests stop a run this way).

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from skebrm.experiments.pipeline import torch_threads

    with torch_threads(cfg.torch_threads):
        return _run(cfg, Path(output_dir), echo, list(callbacks))


def _run(cfg, out: Path, echo, callbacks) -> dict:
    import datasets
    from omegaconf import OmegaConf
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOConfig, GRPOTrainer

    from skebrm._io import write_json_atomic
    from skebrm.experiments.overoptimization import build_context, length_preference
    from skebrm.experiments.report import _jsonable, write_json
    from skebrm.experiments.rl.tracking import GoldTracker
    from skebrm.sampling.base import prompt_messages

    out.mkdir(parents=True, exist_ok=True)
    rl, ov, seed, progress = cfg.rl, cfg.overoptimization, int(cfg.seed), bool(cfg.progress)
    if cfg.policy.get("prepare") is not None:
        _build(cfg.policy.prepare)(str(cfg.policy.name_or_path))

    # 1-2: the proxies, fitted on the best-of-n study's data, and their agreement
    data = _build(cfg.bon_data.source)(build_context(cfg, progress))
    scorers, agreement = fit_rl_proxies(cfg, data, progress=progress)
    if rl.proxy not in scorers:
        raise ValueError(
            f"run_rl_overoptimization: rl.proxy must be one of {sorted(scorers)}, got {rl.proxy!r}."
        )
    train_prompts, eval_prompts = _prompts(cfg)
    meta = {
        "experiment": cfg.experiment_name,
        "proxy": rl.proxy,
        "beta": float(rl.beta),
        "policy": cfg.policy.name,
        "seed": seed,
        "agreement": agreement,
        "n_train_prompts": len(train_prompts),
        "n_eval_prompts": len(eval_prompts),
        "initial_policy_gold_mean": float(data.eval_gold.mean()),
        # the gold RM's own taste for length, beside each proxy's (in "agreement")
        "gold_length_preference": (
            None
            if data.eval_n_tokens is None
            else length_preference(data.eval_gold, data.eval_n_tokens, data.eval_finished)
        ),
        "grpo": OmegaConf.to_container(rl.grpo, resolve=True),
        "tracking": OmegaConf.to_container(rl.tracking, resolve=True),
    }
    write_json_atomic(out / RUN_FILE, _jsonable(meta))
    echo(
        "proxy-gold agreement on held-out policy pairs: "
        + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in agreement.items())
    )
    if rl.get("dry_run", False):
        # the proxies and the gate only: what a run would start from, without the RL
        acc, gate = agreement[rl.proxy]["accuracy"], float(rl.agreement.min)
        echo(
            f"dry run: proxy {rl.proxy!r} agrees with the gold RM on {acc:.3f} of held-out "
            f"policy pairs ({'passes' if acc >= gate else 'below'} rl.agreement.min={gate:g}); "
            f"no GRPO step was run. {out / RUN_FILE}"
        )
        return {**meta, "task": "rl_overoptimization", "dry_run": True}
    _check_agreement(rl, agreement, echo)

    # 3: GRPO with gold tracking, resumed from the last checkpoint of this run folder
    ckpt_dir = out / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    grpo = OmegaConf.to_container(rl.grpo, resolve=True)
    if not _completed(last, int(grpo["max_steps"])):
        if last is not None:
            echo(f"resuming from {last}")
        device = cfg.device
        proxy = _text_reward(
            lambda: _build(cfg.backbone.model),
            max_length=cfg.backbone.max_length,
            batch_size=cfg.backbone.batch_size,
            device=device,
            scorer=scorers[rl.proxy],
            name=f"proxy_{rl.proxy}",
        )
        gold = _text_reward(
            lambda: _build(ov.gold.model)(),
            max_length=ov.gold.max_length,
            batch_size=ov.gold.batch_size,
            device=device,
            scorer=None,
            name="gold",
        )
        load = _build(cfg.policy.model)
        policy, tok = load()
        # the frozen initial policy, for the KL estimate. A peft policy disables its adapters
        # instead; at beta > 0 TRL loads one of its own, which the tracker shares unless TRL
        # moves it towards the policy (sync_ref_model)
        shares_trls = float(rl.beta) > 0 and not grpo.get("sync_ref_model", False)
        ref_model = None
        if rl.get("peft") is None and not shares_trls:
            ref_model, _ = load()
            ref_model.eval().requires_grad_(False)
        dataset = datasets.Dataset.from_dict(
            {
                "prompt": [prompt_messages(p) for p in train_prompts],
                "prompt_text": train_prompts,
            }
        )
        args = grpo_config(
            GRPOConfig,
            grpo,
            output_dir=str(ckpt_dir),
            beta=float(rl.beta),
            seed=seed,
            use_cpu=device == "cpu",
        )
        tr = rl.tracking
        tracker = GoldTracker(
            eval_prompts,
            [prompt_messages(p) for p in eval_prompts],
            tok,
            gold=gold,
            proxy=proxy,
            ref_model=ref_model,
            path=out / TRACKING_FILE,
            every=int(tr.every),
            samples_per_prompt=int(tr.samples_per_prompt),
            max_new_tokens=int(tr.max_new_tokens),
            seed=int(tr.seed),
            batch_size=int(tr.batch_size),
        )
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=[proxy],
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=[tracker, *callbacks],
            peft_config=_build(rl.peft) if rl.get("peft") is not None else None,
        )
        tracker.trainer = trainer
        if ref_model is not None:
            ref_model.to(trainer.accelerator.device)
        elif shares_trls and trainer.ref_model is not None:
            tracker.ref_model = trainer.accelerator.unwrap_model(trainer.ref_model)
        trainer.train(resume_from_checkpoint=last)

    # 4: the report of this run
    from skebrm.experiments.rl.report import load_rl_runs

    runs = load_rl_runs([out])
    results = {
        **meta,
        "task": "rl_overoptimization",
        "summary": summarise_run(runs[0]["records"]),
        "tracking_file": TRACKING_FILE,
    }
    if cfg.evaluation.plots:
        plot_rl_overoptimization(
            runs, out / "rl_curves.png", title=f"GRPO against {rl.proxy}, β = {rl.beta:g}"
        )
        results["plots"] = ["rl_curves.png"]
    write_json(results, out / "results.json")
    echo(format_rl_overoptimization(runs))
    echo(f"results: {out / 'results.json'}")
    return results

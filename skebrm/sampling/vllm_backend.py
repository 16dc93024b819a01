"""Policy sampling with vLLM, the GPU user's backend.

vLLM cannot be installed or run on the project's CPU machines: this module is written
against vLLM's documented offline API (``vllm.LLM``, ``vllm.SamplingParams``,
``LLM.generate`` returning ``RequestOutput`` objects whose ``outputs`` are
``CompletionOutput`` with ``text``, ``token_ids`` and ``finish_reason``), and its wiring
is tested with a fake ``vllm`` module. It has not been run against a real vLLM here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from skebrm.sampling.base import Completion, PolicySampler, prompt_messages

__all__ = ["VLLMSampler"]


def _folder_fingerprint(path: Path) -> str:
    """SHA-256 over the weight files of a local model folder (name, then content)."""
    from skebrm._io import sha256_file

    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    if not files:
        raise FileNotFoundError(f"VLLMSampler: no weight files in {str(path)!r}.")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


class VLLMSampler(PolicySampler):
    """Samples with ``vllm.LLM.generate``: all prompts in one call, ``n`` samples each.

    Each prompt is rendered with the model's chat template (``LLM.get_tokenizer()``)
    and passed as token ids, with its own
    ``SamplingParams(n=n_samples, seed=SeedSequence([seed, i]))``, so a prompt's samples
    do not depend on the other prompts of the call.

    Parameters
    ----------
    model : str, default="smollm2"
        A model folder or hub name for ``vllm.LLM(model=...)``; ``"smollm2"`` is the
        SmolLM2-135M-Instruct folder converted from the GGUF file
        (:func:`skebrm.extraction.convert_smollm2`).
    revision : str, optional
        Pins a hub model (part of the cache key, in place of a weights checksum).
    temperature : float, default=1.0
        Sampling temperature, > 0 (see :class:`~skebrm.sampling.PolicySampler`).
    top_p : float, default=1.0
        Nucleus sampling; 1.0 is off.
    top_k : int, default=0
        Keep the ``top_k`` most likely tokens; 0 is off.
    max_new_tokens : int, default=96
        Most tokens generated per completion.
    dtype : str, default="auto"
        The weights' dtype, passed to ``vllm.LLM``.
    gpu_memory_utilization : float, default=0.9
        Fraction of the GPU memory vLLM may use, passed to ``vllm.LLM``.
    llm_kwargs : dict, optional
        Further ``vllm.LLM`` arguments (``tensor_parallel_size``, ``max_model_len``, ...).
    """

    backend = "vllm"

    def __init__(
        self,
        model: str = "smollm2",
        *,
        revision: str | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 96,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        llm_kwargs: dict | None = None,
    ):
        super().__init__(
            temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens
        )
        self.model = model
        self.revision = revision
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.llm_kwargs = llm_kwargs

    def _model_path(self) -> str:
        if self.model == "smollm2":
            from skebrm.extraction import convert_smollm2

            return str(convert_smollm2())
        return os.path.expanduser(str(self.model))

    def load(self) -> VLLMSampler:
        if getattr(self, "llm_", None) is not None:
            return self
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "VLLMSampler needs vLLM (a GPU machine: pip install vllm); on a CPU use "
                "sampler=transformers or sampler=llama_cpp."
            ) from exc
        path = self._model_path()
        self.llm_ = vllm.LLM(
            model=path,
            revision=self.revision,
            dtype=self.dtype,
            gpu_memory_utilization=float(self.gpu_memory_utilization),
            **dict(self.llm_kwargs or {}),
        )
        self.model_path_ = path
        self.vllm_version_ = str(getattr(vllm, "__version__", "unknown"))
        self._identity = None
        return self

    def identity(self) -> dict:
        self.load()
        if self._identity is None:
            local = Path(self.model_path_)
            weights = _folder_fingerprint(local) if local.is_dir() else None
            template = str(getattr(self.llm_.get_tokenizer(), "chat_template", None))
            self._identity = {
                "backend": self.backend,
                "policy": str(self.model),
                "revision": self.revision,
                "weights_sha256": weights,
                "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
                "dtype": str(self.dtype),
                "vllm_version": self.vllm_version_,
            }
        # the settings are read at every call: they may be changed after loading
        return {**self._identity, "settings": self.settings()}

    def _sample(self, prompts, n_samples, seed):
        import numpy as np
        from vllm import SamplingParams

        tokenizer = self.llm_.get_tokenizer()
        # token ids (vLLM's TokensPrompt), so that no second BOS is added to the template's
        inputs = []
        for p in prompts:
            text = tokenizer.apply_chat_template(
                prompt_messages(p), tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            inputs.append({"prompt_token_ids": list(ids)})
        params = [
            SamplingParams(
                n=n_samples,
                temperature=float(self.temperature),
                top_p=float(self.top_p),
                top_k=int(self.top_k) if self.top_k > 0 else -1,  # -1: off in every version
                max_tokens=int(self.max_new_tokens),
                seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
            )
            for i in range(len(prompts))
        ]
        results = self.llm_.generate(inputs, params, use_tqdm=False)
        out = []
        for res in results:
            row = []
            for o in sorted(res.outputs, key=lambda o: o.index):
                if o.finish_reason not in ("stop", "length"):
                    raise RuntimeError(
                        f"VLLMSampler: a request ended with finish_reason={o.finish_reason!r}."
                    )
                row.append(Completion(o.text, len(o.token_ids), o.finish_reason))
            out.append(row)
        return out

"""Policy samplers and a resumable sample cache, for best-of-n studies.

A :class:`PolicySampler` draws ``n_samples`` completions per prompt from an
instruction-tuned policy (SmolLM2-135M-Instruct offline) at temperature 1. Three
backends share the sampling settings and are the options of the Hydra config group
``conf/sampler/``:

* :class:`TransformersSampler` — Hugging Face ``generate`` in left-padded batches;
* :class:`LlamaCppSampler` — llama.cpp (``pip install 'skebrm[llama]'``), several
  sequences per decode call;
* :class:`VLLMSampler` — vLLM, for GPU machines (written against vLLM's documented API
  and tested with a fake module: vLLM cannot run on the project's CPU machines).

:func:`sample_to_cache` fills a sharded, checksummed, resumable cache that refuses stale
keys; :func:`load_samples` reads it back.
"""

from skebrm.sampling.base import FINISH_REASONS, Completion, PolicySampler, prompt_messages
from skebrm.sampling.cache import (
    PolicySamples,
    SampleCacheReport,
    load_samples,
    prompts_fingerprint,
    sample_to_cache,
    shard_seed,
)
from skebrm.sampling.hf_generate import TransformersSampler, load_causal_lm
from skebrm.sampling.llama_cpp_backend import LlamaCppSampler, sample_logits
from skebrm.sampling.vllm_backend import VLLMSampler

__all__ = [
    "FINISH_REASONS",
    "Completion",
    "LlamaCppSampler",
    "PolicySampler",
    "PolicySamples",
    "SampleCacheReport",
    "TransformersSampler",
    "VLLMSampler",
    "load_causal_lm",
    "load_samples",
    "prompt_messages",
    "prompts_fingerprint",
    "sample_logits",
    "sample_to_cache",
    "shard_seed",
]

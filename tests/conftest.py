"""Shared fixtures: a tiny offline tokenizer and tiny random reward models built from configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The studies' preference files: a developer checkout keeps them in a folder beside the
# repository; $SKEBRM_DATA_DIR names another one.
os.environ.setdefault(
    "SKEBRM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")
)

EXTRACTION_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
EXTRACTION_ARCHITECTURES = [
    "gpt2",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "deberta-v2",
    "roberta",
    "bert",
]


def extraction_make_tokenizer(chat_template: str | None = None, pad: bool = True):
    """A byte-level tokenizer (no merges, 260 ids: 4 specials then 256 bytes), offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(EXTRACTION_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", 1), ("</s>", 2)],
    )
    kwargs = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if pad:
        kwargs["pad_token"] = "<pad>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


EXTRACTION_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
)


def extraction_make_model(model_type: str, *, seed: int = 0, **overrides):
    """A tiny randomly initialised one-label ``*ForSequenceClassification`` model."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kwargs = {
        "vocab_size": 260,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "num_labels": 1,
    }
    if model_type == "gpt2":
        kwargs.update(n_embd=32, n_layer=2, n_head=4, n_positions=512)
    if model_type in ("llama", "mistral", "qwen2", "gemma"):
        kwargs.update(num_key_value_heads=2, head_dim=8)
    if model_type == "gemma":
        kwargs.update(head_dim=8)
    if model_type == "deberta-v2":
        kwargs.update(
            relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"]
        )
    if model_type == "roberta":
        kwargs.update(pad_token_id=0)
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    return model.eval()


SAMPLING_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def sampling_make_causal_lm(seed: int = 0, dtype=None):
    """A tiny random llama causal LM (a policy) on the 260-id byte tokenizer above."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=260,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).to(dtype or torch.float32).eval()


def sampling_make_sampler(**kwargs):
    """A TransformersSampler on a tiny random policy and the byte tokenizer with a chat template."""
    from skebrm.sampling import TransformersSampler

    model = kwargs.pop("model", None) or sampling_make_causal_lm()
    return TransformersSampler(model, extraction_make_tokenizer(SAMPLING_CHAT_TEMPLATE), **kwargs)


@pytest.fixture
def extraction_tokenizer():
    return extraction_make_tokenizer()


@pytest.fixture
def extraction_chat_tokenizer():
    return extraction_make_tokenizer(EXTRACTION_CHAT_TEMPLATE)


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def load_script():
    """Import a repository script (``scripts/…``, ``benchmarks/…``) by its path."""

    def load(relative: str):
        path = REPO_ROOT / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_bundle_parts():
    """A tiny random BERT reward model (rewards that vary), 40 bundled pairs and its calibrator.

    Returns a namespace with ``model``, ``tokenizer``, ``calibrator`` (fitted on the
    extraction of ``pairs`` at ``max_length``), ``pairs``, ``result`` and ``identity``
    (the extractor's record). Session-wide: tests must not modify the model or calibrator.
    """
    from types import SimpleNamespace

    from skebrm import EnergyRewardCalibrator
    from skebrm.datasets import load_hh_rlhf_harmless
    from skebrm.experiments.backbones import build_tiny_reward_model
    from skebrm.extraction import EmbeddingExtractor

    model, tokenizer = build_tiny_reward_model("bert", initializer_range=0.5)
    pairs = load_hh_rlhf_harmless(n=40)
    extractor = EmbeddingExtractor(model, tokenizer, max_length=64).fit()
    result = extractor.extract(pairs)
    calibrator = EnergyRewardCalibrator(
        hidden=(16, 8),
        reward_hidden=(4, 8),
        n_negatives=16,
        max_epochs=2,
        grid_size=64,
        random_state=0,
        device="cpu",
    ).fit(result.embeddings, result.rewards, **result.fit_params())
    return SimpleNamespace(
        model=model,
        tokenizer=tokenizer,
        calibrator=calibrator,
        pairs=pairs,
        result=result,
        identity=extractor.identity(),
        max_length=64,
    )


def openrlhf_payload_today(tok, prompt, response, max_prompt_tokens=None):
    """A request as OpenRLHF's SingleTurnAgentExecutor sends it: one query,
    decode(prompt ids + response ids) with the policy's eos; a prompt longer than
    ``max_prompt_tokens`` keeps its last tokens, and the whole prompt is sent beside."""
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None and len(prompt_ids) > max_prompt_tokens:
        prompt_ids = prompt_ids[-max_prompt_tokens:]
    response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    query = tok.decode(prompt_ids + response_ids, skip_special_tokens=False)
    return {"query": [query], "prompts": [prompt], "labels": [None]}


def openrlhf_payload_old(tok, prompts, responses):
    """Older OpenRLHF: batch_decode of left-padded sequences, BOS added twice, pad after eos."""
    rows = []
    for p, r in zip(prompts, responses):
        ids = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
        rows.append((ids, tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))
    wp, wr = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    pad = [tok.pad_token_id]
    seqs = [pad * (wp - len(p)) + p + r + pad * (wr - len(r)) for p, r in rows]
    return {"query": tok.batch_decode(seqs, skip_special_tokens=False), "prompts": prompts}

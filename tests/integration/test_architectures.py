"""EmbeddingExtractor on tiny random models of every supported family (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    EXTRACTION_ARCHITECTURES,
    EXTRACTION_CHAT_TEMPLATE,
    extraction_make_model,
    extraction_make_tokenizer,
)
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from skebrm.extraction import EmbeddingExtractor, HeadAdapter, SelfCheckError

ROWS = [
    ("Human: hi there\n\nAssistant: hello\n\nHuman: how are you today?", "fine, thanks."),
    ("short", "a"),
    ("", "a response to no prompt"),
    ("a prompt with an empty response", ""),
    ("p " * 40, "x y z"),
    ("what is 2+2?", "4, of course; " * 3),
    ("one more", "row"),
]


def _alone(model, tokenizer, extractor, rows):
    """Each row run through the model by itself, unpadded: the reference rewards."""
    out = []
    for prompt, response in rows:
        text = extractor.template_.render(prompt, response)
        ids = tokenizer(text, add_special_tokens=extractor.template_.add_special_tokens)
        ids = torch.tensor([ids["input_ids"][: extractor.max_length]])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
        out.append(float(logits[0, 0]))
    return np.array(out)


@pytest.mark.parametrize("model_type", EXTRACTION_ARCHITECTURES)
def test_rewards_match_the_model_and_do_not_depend_on_batching(model_type):
    model = extraction_make_model(model_type)
    tok = extraction_make_tokenizer()
    results = {}
    for side in ("left", "right"):
        for bs in (1, 3, 8):
            ext = EmbeddingExtractor(model, tok, batch_size=bs, padding_side=side, max_length=128)
            results[side, bs] = ext.fit().extract(ROWS)
    ref = results["right", 1]
    assert ref.embeddings.shape == (len(ROWS), 32) and ref.embeddings.dtype == np.float32
    assert ref.n_truncated == 0
    for res in results.values():
        np.testing.assert_allclose(res.embeddings, ref.embeddings, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(res.rewards, ref.rewards, atol=2e-6, rtol=1e-4)
    # output order is input order, and each reward is the model's own logit on the row alone
    np.testing.assert_allclose(ref.rewards, _alone(model, tok, ext, ROWS), atol=2e-6, rtol=1e-4)
    # the head's weights applied to the embedding give the reward
    _, layer = ext.head_name_, ext.head_layer_
    w = layer.weight.detach().double().numpy()[0]
    b = 0.0 if layer.bias is None else float(layer.bias.detach()[0])
    np.testing.assert_allclose(ref.embeddings @ w + b, ref.rewards, atol=1e-5)
    expected_pooling = "model" if model_type in ("bert", "roberta", "deberta-v2") else "last_token"
    assert ext.pooling_ == expected_pooling


def test_chat_template_and_pairs():
    model = extraction_make_model("qwen2")
    tok = extraction_make_tokenizer(EXTRACTION_CHAT_TEMPLATE)
    pairs = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad", "subset": "a"},
        {"prompt": "q2", "chosen": "yes", "rejected": "", "subset": "b", "section": "S"},
    ]
    ext = EmbeddingExtractor(model, tok, batch_size=3).fit()
    res = ext.extract(pairs)
    assert res.pair_id.tolist() == [0, 0, 1, 1]
    assert res.chosen.tolist() == [True, False, True, False]
    assert res.subset.tolist() == ["a", "a", "b", "b"]
    assert res.section.tolist() == [None, None, "S", "S"]
    assert set(res.fit_params()) == {"pair_id", "chosen", "groups"}
    assert res.groups.tolist() == [0, 0, 1, 1]  # the prompt of each row
    rows = [(p["prompt"], p[k]) for p in pairs for k in ("chosen", "rejected")]
    np.testing.assert_allclose(res.rewards, _alone(model, tok, ext, rows), atol=2e-6)
    np.testing.assert_array_equal(ext.transform(pairs), res.embeddings)


def test_tokenizer_and_model_without_pad_token():
    """GPT-2 style: no pad id anywhere; each row is pooled at its last token, as alone."""
    model = extraction_make_model("gpt2", pad_token_id=None)
    assert model.config.pad_token_id is None
    tok = extraction_make_tokenizer(pad=False)
    assert tok.pad_token is None
    for side in ("left", "right"):
        ext = EmbeddingExtractor(model, tok, batch_size=4, padding_side=side).fit()
        res = ext.extract(ROWS)
        np.testing.assert_allclose(res.rewards, _alone(model, tok, ext, ROWS), atol=2e-6)
    assert model.config.pad_token_id is None  # lent for batches only


def test_tokenizer_without_pad_token_uses_the_model_pad_id():
    """Llama style: the config names a pad id, the tokenizer has none: pad with the model's."""
    model = extraction_make_model("llama")
    tok = extraction_make_tokenizer(pad=False)
    ext = EmbeddingExtractor(model, tok, batch_size=4, padding_side="left").fit()
    assert ext.pad_token_id_ == model.config.pad_token_id == 0
    np.testing.assert_allclose(ext.extract(ROWS).rewards, _alone(model, tok, ext, ROWS), atol=2e-6)


def test_self_check_fails_loudly_when_the_head_is_not_the_reward():
    model = extraction_make_model("llama")
    model.score.register_forward_hook(lambda module, args, output: output * 2 + 1)
    with pytest.raises(SelfCheckError, match=r"self-check failed on the batch: W·e \+ b"):
        EmbeddingExtractor(model, extraction_make_tokenizer()).fit().extract(ROWS)


class _ValueHeadLM(nn.Module):
    """A causal LM with a TRL-style value head: forward returns per-token values."""

    def __init__(self):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(
            "gpt2",
            vocab_size=260,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        torch.manual_seed(0)
        self.pretrained_model = AutoModelForCausalLM.from_config(config)
        self.v_head = nn.Module()
        self.v_head.summary = nn.Linear(32, 1)
        self.config = config

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        out = self.pretrained_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
        )
        values = self.v_head.summary(out.hidden_states[-1]).squeeze(-1)
        return {"lm_logits": out.logits, "value": values}


def test_adapter_hook_for_a_value_head_on_a_causal_lm():
    model = _ValueHeadLM().eval()
    tok = extraction_make_tokenizer()
    with pytest.raises(ValueError, match="cannot find the scoring layer|num_labels"):
        EmbeddingExtractor(model, tok).fit()
    adapter = HeadAdapter("v_head.summary", pooling="last_token")
    results = [
        EmbeddingExtractor(model, tok, head=adapter, batch_size=bs, padding_side=side)
        .fit()
        .extract(ROWS)
        for bs, side in ((1, "right"), (4, "left"), (8, "right"))
    ]
    ext = EmbeddingExtractor(model, tok, head=adapter).fit()
    ref = []
    for prompt, response in ROWS:
        ids = torch.tensor([tok(ext.template_.render(prompt, response))["input_ids"]])
        with torch.inference_mode():
            ref.append(float(model(ids)["value"][0, -1]))
    for res in results:
        np.testing.assert_allclose(res.rewards, ref, atol=2e-6)
        np.testing.assert_allclose(res.embeddings, results[0].embeddings, atol=2e-5)
    assert ext.head_name_ == "v_head.summary" and ext.pooling_ == "last_token"


def test_load_by_path_matches_the_instance(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model = extraction_make_model("mistral")
    tok = extraction_make_tokenizer(EXTRACTION_CHAT_TEMPLATE)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    seen = {}
    original = AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    by_path = EmbeddingExtractor(str(tmp_path)).fit()
    assert seen["trust_remote_code"] is False
    a = by_path.extract(ROWS)
    b = EmbeddingExtractor(model, tok).fit().extract(ROWS)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
    np.testing.assert_allclose(a.rewards, b.rewards, atol=1e-6)
    assert (
        by_path.identity()["weights_sha256"]
        == EmbeddingExtractor(model, tok).fit().weights_fingerprint()
    )


def test_bfloat16_passes_its_self_check():
    model = extraction_make_model("llama")
    res = (
        EmbeddingExtractor(model, extraction_make_tokenizer(), dtype="bfloat16").fit().extract(ROWS)
    )
    assert res.embeddings.dtype == np.float32 and np.isfinite(res.rewards).all()


def test_long_rows_are_cut_and_counted():
    model = extraction_make_model("gemma")
    tok = extraction_make_tokenizer()
    rows = [("old turn " * 30, "kept response"), ("p", "r" * 80), ("q", "a")]
    res = EmbeddingExtractor(model, tok, max_length=48).fit().extract(rows)
    assert (res.n_truncated, res.n_response_truncated) == (2, 1)
    with pytest.raises(ValueError, match="row 1: the response alone"):
        EmbeddingExtractor(model, tok, max_length=48, long_response="error").fit().extract(rows)


def test_sklearn_pipeline_and_clone():
    model = extraction_make_model("gpt_neox")
    ext = EmbeddingExtractor(model, extraction_make_tokenizer(), batch_size=4)
    pipe = Pipeline([("extract", ext), ("scale", StandardScaler())])
    Z = pipe.fit_transform(ROWS)
    assert Z.shape == (len(ROWS), 32)
    assert clone(ext).get_params()["batch_size"] == 4
    assert ext.get_feature_names_out()[:2].tolist() == ["e0", "e1"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 0}, ValueError, "max_length must be a positive int, got 0"),
        ({"batch_size": "8"}, ValueError, "batch_size must be a positive int, got '8'"),
        ({"long_response": "drop"}, ValueError, "long_response must be 'truncate' or 'error'"),
        ({"padding_side": "middle"}, ValueError, "padding_side must be None, 'left' or 'right'"),
        ({"dtype": "int8"}, ValueError, "dtype must be None, a torch.dtype or one of"),
        ({"tokenizer": None}, ValueError, "tokenizer is required when model is an nn.Module"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    params = {"tokenizer": extraction_make_tokenizer(), **kwargs}
    tok = params.pop("tokenizer")
    with pytest.raises(error, match=match):
        EmbeddingExtractor(extraction_make_model("llama"), tok, **params).fit()


def test_bad_model_and_inputs():
    with pytest.raises(TypeError, match="model must be an nn.Module or a local path, got int"):
        EmbeddingExtractor(3).fit()
    ext = EmbeddingExtractor(extraction_make_model("llama"), extraction_make_tokenizer()).fit()
    with pytest.raises(ValueError, match="X is empty"):
        ext.extract([])
    with pytest.raises(TypeError, match="X must be a list of preference pairs"):
        ext.extract("just a string")
    with pytest.raises(ValueError, match=r"X\[1\] must be a \(prompt, response\) pair"):
        ext.extract([("p", "r"), ("p", "r", "extra")])
    with pytest.raises(TypeError, match="row 0: the response must be a str, got float"):
        ext.extract([("p", float("nan"))])
    with pytest.raises(ValueError, match=r"missing the field\(s\) \['rejected'\]"):
        ext.extract([{"prompt": "p", "chosen": "c"}])

"""RefinedRewardModel: scoring against a plain loop, the TRL call, checks and persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skebrm import EnergyRewardCalibrator, RefinedRewardModel, RewardScores
from skebrm.bundle import BundleMismatchError
from skebrm.exceptions import NotFittedError


@pytest.fixture
def parts(tiny_bundle_parts):
    return tiny_bundle_parts


@pytest.fixture
def bundle(parts):
    return RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length, penalty=0.5
    )


def _rows(parts, n=12):
    prompts = [p["prompt"] for p in parts.pairs[:n]]
    completions = [p["chosen"] for p in parts.pairs[:n]]
    return prompts, completions


def test_score_matches_a_plain_loop(parts, bundle):
    """Base reward: the model's own logit on each row alone; refined/std: the calibrator's."""
    prompts, completions = _rows(parts)
    got = bundle.score(prompts, completions)
    assert isinstance(got, RewardScores) and len(got) == len(prompts)
    tok, model = parts.tokenizer, parts.model
    for i, (p, c) in enumerate(zip(prompts, completions)):
        enc = tok(f"{p}\n\n{c}", return_tensors="pt")
        if enc["input_ids"].shape[1] > parts.max_length:
            continue  # truncated rows: covered by the extractor's own tests
        with torch.no_grad():
            logit = float(model(**enc).logits[0, 0])
        assert got.base_reward[i] == pytest.approx(logit, abs=1e-5)
    res = bundle.extractor.extract(list(zip(prompts, completions)))
    cal = parts.calibrator
    np.testing.assert_allclose(got.base_reward, res.rewards, rtol=0, atol=0)
    np.testing.assert_allclose(
        got.refined_reward, cal.predict(res.embeddings, base_reward=res.rewards), atol=1e-12
    )
    np.testing.assert_allclose(got.std, cal.score_uncertainty(res.embeddings), atol=1e-12)
    assert np.all(got.std > 0)
    assert np.ptp(got.base_reward) > 0.1  # the tiny model's rewards vary


def test_call_is_refined_minus_penalty_std(parts, bundle):
    prompts, completions = _rows(parts, 6)
    s = bundle.score(prompts, completions)
    out = bundle(prompts=prompts, completions=completions)
    assert isinstance(out, list) and all(type(r) is float for r in out)
    np.testing.assert_allclose(out, s.refined_reward - 0.5 * s.std, atol=1e-12)
    assert bundle.__name__ == "refined_reward"


def test_results_follow_input_order(parts, bundle):
    prompts, completions = _rows(parts)
    order = np.random.default_rng(0).permutation(len(prompts))
    a = bundle.score(prompts, completions)
    b = bundle.score([prompts[i] for i in order], [completions[i] for i in order])
    np.testing.assert_allclose(b.base_reward, a.base_reward[order], atol=1e-5)
    np.testing.assert_allclose(b.std, a.std[order], atol=1e-5)


def test_scoring_runs_under_inference_mode(parts, bundle, monkeypatch):
    seen = []
    real = parts.calibrator.predict

    def spy(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(parts.calibrator, "predict", spy)
    bundle.score(*_rows(parts, 2))
    assert seen == [True]


def test_empty_input_gives_empty_scores(bundle):
    s = bundle.score([], [])
    assert len(s) == 0 and s.std.shape == (0,)


def test_settings_are_read_back_from_the_extractor(parts, bundle):
    s = bundle.extraction_settings
    assert s == parts.identity
    assert s["max_length"] == 64 and s["pooling"] == "model" and s["dtype"] == "float32"
    assert s["template"] == "format:{prompt}\n\n{response}"
    assert "max_length=64" in repr(bundle)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"penalty": -1.0}, ValueError, r"penalty must be a finite float >= 0, got -1\.0"),
        ({"penalty": float("nan")}, ValueError, "penalty must be a finite float >= 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"name": ""}, ValueError, "name must be a non-empty str"),
        ({"device": "gpu0"}, ValueError, "device must be a torch device"),
    ],
)
def test_bad_parameters_are_refused(parts, kwargs, error, match):
    with pytest.raises(error, match=match):
        RefinedRewardModel(parts.model, parts.tokenizer, parts.calibrator, **kwargs)


def test_calibrator_must_be_a_fitted_calibrator(parts):
    with pytest.raises(TypeError, match="calibrator must be a fitted EnergyRewardCalibrator"):
        RefinedRewardModel(parts.model, parts.tokenizer, object())
    with pytest.raises(NotFittedError):
        RefinedRewardModel(parts.model, parts.tokenizer, EnergyRewardCalibrator())


def test_embedding_width_mismatch_is_refused(parts):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    other = EnergyRewardCalibrator(
        hidden=(8,), reward_hidden=(4,), n_negatives=8, max_epochs=1, grid_size=16, device="cpu"
    ).fit(X, X[:, 0])
    with pytest.raises(BundleMismatchError, match="fitted on 8-dimensional embeddings.*takes 16"):
        RefinedRewardModel(parts.model, parts.tokenizer, other)


@pytest.mark.parametrize(
    ("key", "value"),
    [("weights_sha256", "0" * 64), ("max_length", 128), ("template", "chat:abc")],
)
def test_fitted_on_another_setting_is_refused(parts, key, value):
    fitted_on = dict(parts.identity, **{key: value})
    with pytest.raises(BundleMismatchError, match=f"{key}: calibrator fitted on {value!r}"):
        RefinedRewardModel(
            parts.model,
            parts.tokenizer,
            parts.calibrator,
            max_length=parts.max_length,
            fitted_on=fitted_on,
        )
    with pytest.raises(TypeError, match="fitted_on must be the dict"):
        RefinedRewardModel(parts.model, parts.tokenizer, parts.calibrator, fitted_on="x")


def test_score_input_errors(bundle):
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        bundle.score(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"prompts must be a list of str, got str"):
        bundle.score("a", ["c"])
    with pytest.raises(TypeError, match=r"completions\[1\] must be a str, got int"):
        bundle.score(["a", "b"], ["c", 3])

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


def test_the_reward_model_runs_under_inference_mode(parts, bundle, monkeypatch):
    seen = []
    handle = parts.model.register_forward_hook(
        lambda *args: seen.append(torch.is_inference_mode_enabled())
    )
    try:
        bundle.score(*_rows(parts, 2))
    finally:
        handle.remove()
    assert seen and all(seen)


def test_scoring_inside_a_callers_inference_mode(parts):
    import copy

    prompts, completions = _rows(parts, 3)
    ref = RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length
    ).score(prompts, completions)
    fresh = copy.deepcopy(parts.calibrator)  # its inference weights are built inside
    with torch.inference_mode():
        bundle = RefinedRewardModel(
            parts.model, parts.tokenizer, fresh, max_length=parts.max_length
        )
        got = bundle.score(prompts, completions)
    np.testing.assert_array_equal(got.refined_reward, ref.refined_reward)


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


def test_fit_guard_runs_the_calibrators_guard_on_the_pairs(parts, tmp_path):
    import copy

    pairs = parts.pairs[:20]
    prompts = [p["prompt"] for p in pairs]
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    cal = copy.deepcopy(parts.calibrator)  # the session's calibrator must stay as it is
    cal.set_params(guard="off")
    bundle = RefinedRewardModel(parts.model, parts.tokenizer, cal, max_length=parts.max_length)
    assert bundle.fit_guard(prompts, chosen, rejected) is bundle
    # reference: the calibrator's own fit_guard on the RM's rows of these pairs
    rows = [row for p, c, r in zip(prompts, chosen, rejected) for row in ((p, c), (p, r))]
    res = bundle.extractor.extract(rows)
    ref = copy.deepcopy(parts.calibrator).set_params(guard="off")
    ref.fit_guard(
        res.embeddings,
        res.rewards,
        pair_id=np.repeat(np.arange(20), 2),
        chosen=np.tile([True, False], 20),
    )
    assert cal.guard_scores_ == ref.guard_scores_ and cal.guard_scores_["n_pairs"] == 20
    assert cal.refinement_helps_ is ref.refinement_helps_
    loaded = RefinedRewardModel.from_pretrained(bundle.save_pretrained(tmp_path / "b"))
    assert loaded.calibrator.guard_scores_ == cal.guard_scores_
    with pytest.raises(ValueError, match="same length, got 20, 20 and 19"):
        bundle.fit_guard(prompts, chosen, rejected[:-1])
    with pytest.raises(ValueError, match="needs at least one pair"):
        bundle.fit_guard([], [], [])
    with pytest.raises(TypeError, match=r"rejected\[0\] must be a str, got int"):
        bundle.fit_guard(["a"], ["b"], [1])


# ------------------------------------------------------------------ persistence
def _resign(folder, edit):
    """Edit the saved config and recompute its digest (a deliberate, consistent forgery)."""
    import json

    from skebrm.bundle import _config_digest

    path = folder / "refined_reward_model.json"
    config = json.loads(path.read_text())
    edit(config)
    config["config_sha256"] = _config_digest(config)
    path.write_text(json.dumps(config))


@pytest.fixture
def saved(bundle, tmp_path):
    return bundle.save_pretrained(tmp_path / "bundle")


def test_round_trip_gives_the_same_numbers(parts, bundle, saved):
    prompts, completions = _rows(parts)
    loaded = RefinedRewardModel.from_pretrained(saved)
    a, b = bundle.score(prompts, completions), loaded.score(prompts, completions)
    np.testing.assert_array_equal(a.base_reward, b.base_reward)
    np.testing.assert_array_equal(a.refined_reward, b.refined_reward)
    np.testing.assert_array_equal(a.std, b.std)
    assert loaded.penalty == 0.5 and loaded.__name__ == "refined_reward"
    same = {k: v for k, v in bundle.extraction_settings.items() if k != "model"}
    assert {k: loaded.extraction_settings[k] for k in same} == same
    assert RefinedRewardModel.from_pretrained(saved, penalty=0.0, batch_size=3).penalty == 0.0
    names = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert "refined_reward_model.json" in names
    assert any(n.startswith("reward_model/") and n.endswith(".safetensors") for n in names)
    assert any(n.startswith("calibrator/") for n in names)
    assert not any(n.endswith((".bin", ".pkl", ".pt", ".joblib")) for n in names)


def test_loading_and_scoring_never_unpickle(parts, saved, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on the serving path")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = RefinedRewardModel.from_pretrained(saved)
    assert len(loaded.score(*_rows(parts, 3))) == 3


def test_saving_again_replaces_the_folder_whole(parts, bundle, saved, monkeypatch):
    (saved / "stray.txt").write_text("left over")
    bundle.save_pretrained(saved)
    assert not (saved / "stray.txt").exists()
    before = sorted(p.read_bytes() for p in saved.rglob("*") if p.is_file())

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(parts.calibrator, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        bundle.save_pretrained(saved)
    assert sorted(p.read_bytes() for p in saved.rglob("*") if p.is_file()) == before


def test_an_edited_file_is_refused(saved):
    weights = next((saved / "reward_model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleMismatchError, match=r"reward_model/.*changed after saving"):
        RefinedRewardModel.from_pretrained(saved)


def test_an_edited_config_is_refused(saved):
    path = saved / "refined_reward_model.json"
    path.write_text(path.read_text().replace('"max_length": 64', '"max_length": 128'))
    with pytest.raises(BundleMismatchError, match="was edited after saving"):
        RefinedRewardModel.from_pretrained(saved)


def test_an_extra_file_is_refused(saved):
    (saved / "reward_model" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(BundleMismatchError, match="pytorch_model.bin"):
        RefinedRewardModel.from_pretrained(saved)


def test_another_reward_model_is_refused(saved):
    _resign(saved, lambda c: c["extraction"].update(weights_sha256="0" * 64))
    with pytest.raises(BundleMismatchError, match=r"not the one the bundle was saved with"):
        RefinedRewardModel.from_pretrained(saved)


def test_a_calibrator_of_another_width_is_refused(saved, tmp_path):
    import shutil

    from skebrm._io import sha256_file

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8)).astype(np.float32)
    other = EnergyRewardCalibrator(
        hidden=(8,), reward_hidden=(4,), n_negatives=8, max_epochs=1, grid_size=16, device="cpu"
    ).fit(X, X[:, 0])
    shutil.rmtree(saved / "calibrator")
    other.save_pretrained(saved / "calibrator")

    def files(config):
        config["files"] = {
            p.relative_to(saved).as_posix(): sha256_file(p)
            for p in saved.rglob("*")
            if p.is_file() and p.name != "refined_reward_model.json"
        }

    _resign(saved, files)
    with pytest.raises(BundleMismatchError, match="fitted on 8-dimensional embeddings"):
        RefinedRewardModel.from_pretrained(saved)


def test_not_a_bundle_and_other_versions_are_refused(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a saved RefinedRewardModel"):
        RefinedRewardModel.from_pretrained(tmp_path / "nothing")
    _resign(saved, lambda c: c.update(format_version=99))
    with pytest.raises(BundleMismatchError, match="format_version 99"):
        RefinedRewardModel.from_pretrained(saved)

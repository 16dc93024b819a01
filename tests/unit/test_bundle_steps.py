"""The served step of a RefinedRewardModel: its definitions, the guard that chooses it, its
persistence and what the TRL reward function, the server and the repr say of it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from skebrm import LengthDebiaser, RefinedRewardModel
from skebrm.debias import response_features
from skebrm.exceptions import ModelIntegrityError
from skebrm.steps import StepChoice

ALL_STEPS = ("base", "debiased", "refined", "refined+debiased", "mean")
LAM = 0.5


@pytest.fixture
def parts(tiny_bundle_parts):
    return tiny_bundle_parts


@pytest.fixture(scope="module")
def debiaser(tiny_bundle_parts):
    """Fitted inductively on the base rewards of a reference set (the bundled pairs' rows)."""
    parts = tiny_bundle_parts
    texts = [p[k] for p in parts.pairs for k in ("chosen", "rejected")]
    rewards = parts.result.rewards
    assert len(texts) == len(rewards)
    return LengthDebiaser(feature="chars").fit(response_features(texts, "chars"), rewards)


def _bundle(parts, **kwargs):
    cal = kwargs.pop("calibrator", None) or copy.deepcopy(parts.calibrator)
    kwargs.setdefault("penalty", LAM)
    return RefinedRewardModel(
        parts.model, parts.tokenizer, cal, max_length=parts.max_length, **kwargs
    )


def _rows(parts, n=10):
    pairs = parts.pairs[:n]
    return [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]


def _pairs(parts, n=24):
    pairs = parts.pairs[:n]
    return (
        [p["prompt"] for p in pairs],
        [p["chosen"] for p in pairs],
        [p["rejected"] for p in pairs],
    )


def _by_hand(step, s, debiaser, completions, lam=LAM):
    """The definition of each step, from the parts ``score()`` returns."""
    length = response_features(completions, "chars")
    if step == "base":
        return s.base_reward
    if step == "debiased":
        return debiaser.transform(length, s.base_reward)
    if step == "refined":
        return s.refined_reward - lam * s.std
    if step == "refined+debiased":
        return s.refined_reward - lam * s.std - debiaser.alpha * debiaser.bias(length)
    if step == "mean":
        return s.mean_reward - lam * s.std
    raise AssertionError(step)


# ------------------------------------------------------------------ definitions
def test_the_default_step_is_refined_and_nothing_changes(parts):
    bundle = _bundle(parts)
    assert bundle.step == "refined" and bundle.debiaser is None and bundle.step_choice_ is None
    prompts, completions = _rows(parts)
    s = bundle.score(prompts, completions)
    assert s.step == "refined" and s.debiased_reward is None
    np.testing.assert_array_equal(s.served(LAM), s.refined_reward - LAM * s.std)
    np.testing.assert_array_equal(s.served(LAM), s.penalized(LAM))
    np.testing.assert_array_equal(bundle(prompts=prompts, completions=completions), s.served(LAM))


@pytest.mark.parametrize("step", ALL_STEPS)
def test_each_steps_served_reward_is_its_definition(parts, debiaser, step):
    bundle = _bundle(parts, debiaser=debiaser, step=step)
    prompts, completions = _rows(parts)
    s = bundle.score(prompts, completions)
    assert s.step == step
    want = _by_hand(step, s, debiaser, completions)
    np.testing.assert_array_equal(s.served(LAM), want)
    np.testing.assert_array_equal(bundle(prompts=prompts, completions=completions), want)
    # the parts themselves: the debiased reward is the debiaser's, the mean the calibrator's
    np.testing.assert_array_equal(
        s.debiased_reward,
        debiaser.transform(response_features(completions, "chars"), s.base_reward),
    )
    res = bundle.extractor.extract(list(zip(prompts, completions)))
    dist = bundle.calibrator.predict_distribution(res.embeddings)
    np.testing.assert_allclose(s.mean_reward, dist.mean(), atol=1e-12)
    np.testing.assert_allclose(s.std, dist.std(), atol=1e-12)


def test_steps_can_be_changed_and_are_checked(parts, debiaser):
    bundle = _bundle(parts, debiaser=debiaser)
    bundle.step = "mean"
    assert bundle.step == "mean" and "step='mean'" in repr(bundle)
    with pytest.raises(ValueError, match=r"step must be one of .*'refined\+debiased'.*got 'x'"):
        bundle.step = "x"
    plain = _bundle(parts)
    with pytest.raises(ValueError, match="step 'debiased' needs a debiaser"):
        plain.step = "debiased"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": "lwr+ebrm"}, ValueError, r"step must be one of .*, got 'lwr\+ebrm'"),
        ({"step": 3}, ValueError, "step must be one of .*, got 3"),
        ({"step": "debiased"}, ValueError, "step 'debiased' needs a debiaser"),
        ({"step": "refined+debiased"}, ValueError, r"'refined\+debiased' needs a debiaser"),
        ({"debiaser": "chars"}, TypeError, r"debiaser must be a fitted LengthDebiaser .*, got str"),
        ({"debiaser": LengthDebiaser()}, ValueError, "debiaser must be fitted"),
    ],
)
def test_bad_step_and_debiaser_are_refused(parts, kwargs, error, match):
    with pytest.raises(error, match=match):
        _bundle(parts, **kwargs)


def test_a_debiaser_of_another_feature_is_refused(parts, debiaser):
    words = LengthDebiaser(feature="words").fit([1.0, 2.0, 3.0, 4.0, 5.0], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"debiaser must have feature='chars'.*got 'words'"):
        _bundle(parts, debiaser=words)


# ------------------------------------------------------------------ the guard
def test_fit_guard_without_steps_keeps_the_calibrators_guard(parts, debiaser):
    bundle = _bundle(parts, debiaser=debiaser, calibrator=copy.deepcopy(parts.calibrator))
    bundle.calibrator.set_params(guard="off")
    assert bundle.fit_guard(*_pairs(parts)) is bundle
    assert bundle.step == "refined" and bundle.step_choice_ is None
    assert bundle.calibrator.guard_scores_["penalty"] == LAM
    bundle.step = "debiased"
    with pytest.raises(ValueError, match="serves step 'debiased'.*pass steps="):
        bundle.fit_guard(*_pairs(parts))


def test_fit_guard_chooses_base_where_no_step_helps(parts, debiaser):
    bundle = _bundle(parts, debiaser=debiaser)
    prompts, chosen, _ = _pairs(parts)
    # the two responses of every pair are the same text: no candidate ranks any pair
    assert bundle.fit_guard(prompts, chosen, chosen, steps="all") is bundle
    choice = bundle.step_choice_
    assert isinstance(choice, StepChoice)
    assert bundle.step == choice.step == "base"
    assert set(choice.scores) == set(ALL_STEPS) and choice.n_pairs == len(prompts)
    assert choice.confidence == bundle.calibrator.guard_confidence
    assert "step='base'" in repr(bundle) and choice.reason in repr(bundle)


def _length_loving(alpha=1.0):
    """A debiaser whose curve is steep in the length: it prefers the shorter response."""
    return LengthDebiaser.from_dict(
        {
            "format": "skebrm.LengthDebiaser",
            "version": 1,
            "params": {"frac": 0.5, "alpha": alpha, "feature": "chars", "it": 3, "delta": 0.0},
            "knots_x": [0.0, 10_000.0],
            "knots_y": [0.0, 10_000.0],
            "n_samples_fit": 2,
        }
    )


def _short_chosen(parts, n=30):
    """Pairs whose chosen response is a short one and whose rejected one is longer."""
    prompts, chosen, rejected = [], [], []
    for p in parts.pairs[:n]:
        a, b = p["chosen"], p["rejected"]
        if len(a) == len(b):
            b = b + " More."
        short, long_ = (a, b) if len(a) < len(b) else (b, a)
        prompts.append(p["prompt"])
        chosen.append(short)
        rejected.append(long_)
    return prompts, chosen, rejected


def test_fit_guard_chooses_the_debiaser_where_it_helps(parts):
    # the RM "rewards length" through the debiaser's curve: the curve removes one reward
    # unit per character, so the debiased reward ranks the shorter (chosen) response first
    bundle = _bundle(parts, debiaser=_length_loving())
    prompts, chosen, rejected = _short_chosen(parts)
    bundle.fit_guard(prompts, chosen, rejected, steps=["debiased", "refined"])
    choice = bundle.step_choice_
    assert bundle.step == choice.step == "debiased"
    assert set(choice.scores) == {"base", "debiased", "refined"}  # the base is always tested
    assert choice.scores["debiased"]["accuracy"] == 1.0 and choice.scores["debiased"]["passes"]
    assert choice.level == pytest.approx((1 - bundle.calibrator.guard_confidence) / 2)
    assert choice.reason.startswith("debiased:") and choice.reason in repr(bundle)
    s = bundle.score(prompts, chosen)
    np.testing.assert_array_equal(bundle(prompts=prompts, completions=chosen), s.debiased_reward)
    # every step: the best of the two debiased steps; the reversed pairs: neither
    bundle.fit_guard(prompts, chosen, rejected, steps="all", confidence=0.9)
    assert bundle.step in ("debiased", "refined+debiased")
    assert bundle.step_choice_.confidence == 0.9 and len(bundle.step_choice_.scores) == 5
    bundle.fit_guard(prompts, rejected, chosen, steps="all")
    assert bundle.step not in ("debiased", "refined+debiased")


def test_fit_guard_all_without_a_debiaser_has_three_candidates(parts):
    bundle = _bundle(parts)
    prompts, chosen, _ = _pairs(parts, 8)
    bundle.fit_guard(prompts, chosen, chosen, steps="all")
    assert set(bundle.step_choice_.scores) == {"base", "refined", "mean"}


def test_the_choice_ignores_the_calibrators_old_guard(parts):
    """A calibrator whose guard serves the base (guard="base", rejected) gives the step
    guard the refinement itself: the choice, not the old guard, decides what is served."""
    from skebrm.exceptions import RefinementWarning

    cal = copy.deepcopy(parts.calibrator).set_params(guard="base", guard_confidence=1.0)
    bundle = _bundle(parts, calibrator=cal)
    prompts, chosen, rejected = _pairs(parts)
    with pytest.warns(RefinementWarning):
        bundle.fit_guard(prompts, chosen, rejected)  # the old guard: rejects
    s = bundle.score(prompts, chosen)
    assert s.base_served
    np.testing.assert_array_equal(s.served(LAM), s.base_reward)
    cal.set_params(guard_confidence=0.8)
    bundle.fit_guard(prompts, chosen, rejected, steps=["refined"])
    t = bundle.score(prompts, chosen)
    assert not t.base_served
    ungated = copy.deepcopy(cal).set_params(guard="off")
    res = bundle.extractor.extract(list(zip(prompts, chosen)))
    np.testing.assert_allclose(
        t.refined_reward, ungated.predict(res.embeddings, base_reward=res.rewards), atol=0
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": ["debiased"]}, ValueError, "step 'debiased' needs a debiaser"),
        ({"steps": ["nope"]}, ValueError, r"steps\[0\] must be one of .*got 'nope'"),
        ({"steps": []}, ValueError, "steps must be 'all' or a non-empty list"),
        ({"steps": "refined"}, ValueError, "steps must be 'all' or a non-empty list"),
        ({"steps": ["mean", "mean"]}, ValueError, "steps names 'mean' twice"),
        (
            {"steps": "all", "confidence": 1.0},
            ValueError,
            r"confidence must be a float in \(0, 1\)",
        ),
        ({"confidence": 0.9}, ValueError, "confidence is only used with steps="),
    ],
)
def test_bad_fit_guard_arguments(parts, kwargs, error, match):
    bundle = _bundle(parts)
    prompts, chosen, rejected = _pairs(parts, 4)
    with pytest.raises(error, match=match):
        bundle.fit_guard(prompts, chosen, rejected, **kwargs)
    assert bundle.step == "refined" and bundle.step_choice_ is None


# ------------------------------------------------------------------ persistence
def test_round_trip_keeps_step_debiaser_and_choice(parts, tmp_path):
    deb = _length_loving(alpha=0.75)
    bundle = _bundle(parts, debiaser=deb)
    prompts, chosen, rejected = _short_chosen(parts)
    bundle.fit_guard(prompts, chosen, rejected, steps="all")
    folder = bundle.save_pretrained(tmp_path / "b")
    doc = json.loads((folder / "refined_reward_model.json").read_text())
    assert doc["format_version"] == 3 and doc["step"] == bundle.step
    assert not any(p.suffix in (".pkl", ".pt", ".bin") for p in folder.rglob("*"))
    loaded = RefinedRewardModel.from_pretrained(folder)
    assert loaded.step == bundle.step
    assert loaded.step_choice_ == bundle.step_choice_
    assert loaded.debiaser.to_dict() == deb.to_dict()
    a, b = bundle.score(prompts, chosen), loaded.score(prompts, chosen)
    # the reloaded RM's float32 logits may differ by an ulp (the BLAS kernel depends on
    # where the weights lie in memory), so the served rewards agree to float32 precision
    np.testing.assert_allclose(a.served(LAM), b.served(LAM), rtol=1e-6, atol=1e-6)
    # the model's name is not saved; everything from the penalty on is
    assert repr(loaded).split("penalty=")[1] == repr(bundle).split("penalty=")[1]


def test_round_trip_of_a_plain_bundle(parts, tmp_path):
    bundle = _bundle(parts, step="mean")
    loaded = RefinedRewardModel.from_pretrained(bundle.save_pretrained(tmp_path / "b"))
    assert loaded.step == "mean" and loaded.debiaser is None and loaded.step_choice_ is None


def _resign(folder, edit):
    from skebrm._manifest import seal

    path = folder / "refined_reward_model.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(seal(config)))


def test_a_bundle_of_the_previous_format_still_loads(parts, tmp_path):
    bundle = _bundle(parts)
    folder = bundle.save_pretrained(tmp_path / "b")

    def to_v2(config):
        for key in ("step", "debiaser", "step_choice", "step_choice_penalty"):
            config.pop(key, None)
        config["format_version"] = 2

    _resign(folder, to_v2)
    loaded = RefinedRewardModel.from_pretrained(folder)
    assert loaded.step == "refined" and loaded.debiaser is None and loaded.step_choice_ is None
    prompts, completions = _rows(parts, 4)
    np.testing.assert_array_equal(
        loaded(prompts=prompts, completions=completions),
        bundle(prompts=prompts, completions=completions),
    )


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.update(step="nope"), "step must be one of"),
        (lambda c: c.update(step="debiased", debiaser=None), "needs a debiaser"),
        (lambda c: c.update(debiaser={"format": "x"}), "LengthDebiaser"),
        (lambda c: c.update(step_choice={"format": "x"}), "StepChoice"),
        (lambda c: c.pop("step"), r"lacks the field\(s\) \['step'\]"),
    ],
)
def test_edited_step_fields_are_refused(parts, tmp_path, edit, match):
    folder = _bundle(parts, debiaser=_length_loving()).save_pretrained(tmp_path / "b")
    _resign(folder, edit)
    with pytest.raises(ModelIntegrityError, match=match):
        RefinedRewardModel.from_pretrained(folder)


def test_a_choice_whose_step_is_not_the_saved_step_is_refused(parts, tmp_path):
    bundle = _bundle(parts, debiaser=_length_loving())
    prompts, chosen, rejected = _short_chosen(parts, 12)
    bundle.fit_guard(prompts, chosen, rejected, steps="all")
    folder = bundle.save_pretrained(tmp_path / "b")
    _resign(folder, lambda c: c.update(step="base" if bundle.step != "base" else "mean"))
    with pytest.raises(ModelIntegrityError, match="the step choice chose"):
        RefinedRewardModel.from_pretrained(folder)


def test_loading_with_another_penalty_than_the_choice_warns(parts, tmp_path):
    import warnings

    from skebrm.exceptions import RefinementWarning

    cal = copy.deepcopy(parts.calibrator).set_params(guard="off")
    bundle = _bundle(parts, calibrator=cal, penalty=0.0)
    prompts, chosen, rejected = _pairs(parts, 6)
    bundle.fit_guard(prompts, chosen, rejected)  # the calibrator's guard: at penalty 0
    assert cal.guard_scores_["penalty"] == 0.0
    bundle.penalty = LAM
    bundle.fit_guard(prompts, chosen, chosen, steps="all")  # the step choice: at LAM
    assert bundle.step_choice_penalty_ == LAM
    assert "guard decided at" not in repr(bundle)
    folder = bundle.save_pretrained(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RefinementWarning)
        loaded = RefinedRewardModel.from_pretrained(folder)  # the choice's penalty: no warning
    assert loaded.step_choice_penalty_ == LAM
    with pytest.warns(RefinementWarning, match="step was chosen for penalty 0.5"):
        other = RefinedRewardModel.from_pretrained(folder, penalty=2.0)
    assert "step chosen at penalty=0.5" in repr(other)


# ------------------------------------------------------------------ TRL and the server
def test_trl_reward_serves_the_step(parts, debiaser):
    from skebrm.integrations.trl import trl_reward

    bundle = _bundle(parts, debiaser=debiaser, step="refined+debiased")
    prompts, completions = _rows(parts, 6)
    s = bundle.score(prompts, completions)
    out = trl_reward(bundle, prompts, completions)
    np.testing.assert_array_equal(out, _by_hand("refined+debiased", s, debiaser, completions))
    messages = [[{"role": "assistant", "content": c}] for c in completions]
    np.testing.assert_array_equal(trl_reward(bundle, prompts, messages), out)


def test_server_serves_the_step_and_health_says_which_and_why(parts):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from skebrm.serving import create_app

    bundle = _bundle(parts, debiaser=_length_loving())
    prompts, completions = _rows(parts, 4)
    with TestClient(create_app(bundle)) as client:
        health = client.get("/health").json()
        assert health["step"] == "refined" and health["step_reason"] is None
    bundle.fit_guard(*_short_chosen(parts), steps=["debiased"])
    assert bundle.step == "debiased"
    with TestClient(create_app(bundle)) as client:
        health = client.get("/health").json()
        assert health["step"] == "debiased"
        assert health["step_reason"] == bundle.step_choice_.reason
        got = client.post(
            "/get_reward",
            json={"query": [p + c for p, c in zip(prompts, completions)], "prompts": prompts},
        ).json()
    s = bundle.score(prompts, completions)
    np.testing.assert_array_equal(got["rewards"], s.debiased_reward)
    np.testing.assert_array_equal(got["scores"], s.refined_reward)


def test_the_start_up_line_names_the_step(parts, tmp_path, monkeypatch, capsys):
    pytest.importorskip("uvicorn")
    import uvicorn

    from skebrm.serving import cli

    bundle = _bundle(parts, debiaser=_length_loving(), step="debiased")
    folder = bundle.save_pretrained(tmp_path / "b")

    class _NoServer:
        started = True

        def __init__(self, config):
            pass

        def run(self):
            pass

    monkeypatch.setattr(uvicorn, "Server", _NoServer)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # keep pytest's handlers
    assert cli.main(["--model", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "serving step 'debiased'" in err and "no step choice" in err

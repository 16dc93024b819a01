"""choose_step: the guard over several candidate rewards (exact sign test, Bonferroni)."""

import json

import numpy as np
import pytest
from scipy import stats

from skebrm.steps import StepChoice, choose_step


def _rows(correct: np.ndarray) -> np.ndarray:
    """Rewards laid out chosen, rejected with the given pairs ranked right (else wrong)."""
    r = np.zeros(2 * correct.size)
    r[0::2] = np.where(correct, 1.0, -1.0)
    return r


def _candidate(base_ok: np.ndarray, better: int, worse: int) -> np.ndarray:
    """A candidate that fixes ``better`` of the base's wrong pairs and breaks ``worse``
    of its right ones."""
    ok = base_ok.copy()
    ok[np.flatnonzero(~base_ok)[:better]] = True
    ok[np.flatnonzero(base_ok)[:worse]] = False
    return _rows(ok)


def test_the_base_is_chosen_when_no_candidate_is_given_or_passes():
    base_ok = np.arange(100) % 3 != 0
    choice = choose_step({"base": _rows(base_ok)})
    assert choice.step == "base" and "no other candidate" in choice.reason
    choice = choose_step({"base": _rows(base_ok), "worse": _candidate(base_ok, 2, 6)})
    assert choice.step == "base"
    assert choice.scores["worse"]["passes"] is False
    assert "no candidate ranks" in choice.reason


def test_the_p_value_is_the_exact_one_sided_sign_test():
    base_ok = np.arange(200) % 2 == 0
    choice = choose_step({"base": _rows(base_ok), "a": _candidate(base_ok, 14, 4)})
    expected = stats.binomtest(14, 18, 0.5, alternative="greater").pvalue
    assert choice.scores["a"]["p_value"] == pytest.approx(expected, rel=1e-12)
    assert (choice.scores["a"]["n_better"], choice.scores["a"]["n_worse"]) == (14, 4)
    assert choice.step == "a" and "a: ranks" in choice.reason


def test_the_level_is_corrected_for_the_number_of_candidates():
    base_ok = np.arange(200) % 2 == 0
    a = _candidate(base_ok, 12, 4)  # p = P(Binom(16, 1/2) >= 12) = 0.038
    p = stats.binomtest(12, 16, 0.5, alternative="greater").pvalue
    assert 0.05 / 3 < p < 0.05
    alone = choose_step({"base": _rows(base_ok), "a": a}, confidence=0.95)
    assert alone.step == "a" and alone.level == pytest.approx(0.05)
    noise = _candidate(base_ok, 0, 0)
    three = choose_step({"base": _rows(base_ok), "a": a, "b": noise, "c": noise}, confidence=0.95)
    assert three.step == "base" and three.level == pytest.approx(0.05 / 3)


def test_the_most_accurate_passing_candidate_is_chosen():
    base_ok = np.arange(400) % 2 == 0
    cands = {
        "base": _rows(base_ok),
        "good": _candidate(base_ok, 40, 5),
        "better": _candidate(base_ok, 60, 5),
        "bad": _candidate(base_ok, 0, 30),
    }
    choice = choose_step(cands, confidence=0.9)
    assert choice.step == "better"
    assert choice.scores["good"]["passes"] and not choice.scores["bad"]["passes"]


def test_pair_metadata_gives_the_same_choice_as_the_interleaved_layout():
    rng = np.random.default_rng(0)
    base_ok = rng.random(150) < 0.6
    cands = {"base": _rows(base_ok), "x": _candidate(base_ok, 20, 3)}
    plain = choose_step(cands)
    perm = rng.permutation(300)
    pair_id = np.repeat(np.arange(150), 2)[perm]
    chosen = np.tile([True, False], 150)[perm]
    shuffled = {k: v[perm] for k, v in cands.items()}
    again = choose_step(shuffled, pair_id=pair_id, chosen=chosen)
    assert again == plain


def test_the_false_choice_rate_on_no_effect_data_is_within_the_level():
    # three candidates that each flip discordant pairs at random, with no true effect:
    # the chance of choosing any of them must stay at most 1 - confidence
    rng = np.random.default_rng(7)
    n_sims, n, confidence = 1000, 200, 0.8
    wrong = 0
    for _ in range(n_sims):
        base_ok = rng.random(n) < 0.65
        cands = {"base": _rows(base_ok)}
        for name in ("a", "b", "c"):
            flip = rng.random(n) < 0.1
            cands[name] = _rows(np.where(flip, ~base_ok, base_ok))
        wrong += choose_step(cands, confidence=confidence).step != "base"
    rate = wrong / n_sims
    # binomial upper 99.9 % bound around the level
    assert rate <= (1 - confidence) + 3 * np.sqrt(0.2 * 0.8 / n_sims)
    assert rate > 0  # the test can pass: the level is spent, not wasted


def test_a_choice_survives_json():
    base_ok = np.arange(100) % 2 == 0
    choice = choose_step({"base": _rows(base_ok), "a": _candidate(base_ok, 15, 1)})
    again = StepChoice.from_dict(json.loads(json.dumps(choice.to_dict())))
    assert again == choice and again.reason == choice.reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"candidates": {}}, "candidates must be a non-empty dict"),
        ({"candidates": {"x": [1.0, 0.0]}}, "base='base' must be one of the candidates"),
        ({"candidates": {"base": [1.0, 0.0], "a": [1.0]}}, r"candidates\['a'\] has 1"),
        ({"candidates": {"base": [1.0, np.nan]}}, "non-finite"),
        ({"candidates": {"base": [1.0, 0.0, 2.0]}}, "an even, non-zero count"),
        ({"candidates": {"base": [1.0, 0.0]}, "confidence": 1.0}, "confidence must be"),
        ({"candidates": {"base": [1.0, 0.0]}, "pair_id": [0, 0]}, "both pair_id and chosen"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        choose_step(**kwargs)


def test_from_dict_refuses_other_formats():
    with pytest.raises(ValueError, match="expected format"):
        StepChoice.from_dict({"format": "other"})
    base_ok = np.arange(10) % 2 == 0
    d = choose_step({"base": _rows(base_ok)}).to_dict()
    with pytest.raises(ValueError, match="version 99"):
        StepChoice.from_dict({**d, "version": 99})

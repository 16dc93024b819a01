"""LengthDebiaser against a plain LOWESS, its two modes, features and persistence."""

import json

import numpy as np
import pytest

pytest.importorskip("statsmodels")

from skebrm import LengthDebiaser
from skebrm.debias import (
    markdown_element_count,
    response_features,
    token_lengths,
)


def _plain_lowess(x, y, frac, it=0):
    """Cleveland's LOWESS, one point at a time: k = int(frac n) nearest points, tricube
    weights, local linear fit; robustifying passes reweight by bisquare(residual / 6 MAD)."""
    n = len(x)
    k = int(frac * n + 1e-10)
    robust = np.ones(n)
    for _ in range(it + 1):
        out = np.empty(n)
        for i in range(n):
            d = np.abs(x - x[i])
            h = np.sort(d)[k - 1]
            w = np.clip(1 - (d / h) ** 3, 0, None) ** 3 * robust
            xm, ym = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
            slope = (w * (x - xm) * (y - ym)).sum() / (w * (x - xm) ** 2).sum()
            out[i] = ym + slope * (x[i] - xm)
        resid = y - out
        s = np.median(np.abs(resid))
        robust = np.clip(1 - (resid / (6 * s)) ** 2, 0, None) ** 2
    return out


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.permutation(n).astype(float) * 13.0 + 5.0
    y = 0.01 * x + np.sin(x / 50) + rng.normal(scale=0.3, size=n)
    return x, y


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.8])
def test_curve_matches_a_plain_lowess(frac):
    x, y = _data()
    d = LengthDebiaser(frac=frac, it=0).fit(x, y)
    np.testing.assert_allclose(d.bias(x), _plain_lowess(x, y, frac), rtol=0, atol=1e-12)


def test_curve_matches_a_plain_lowess_with_robustifying_passes():
    x, y = _data(seed=1)
    y[3] += 25.0  # an outlier the robust passes should discount
    d = LengthDebiaser(frac=0.5, it=2).fit(x, y)
    np.testing.assert_allclose(d.bias(x), _plain_lowess(x, y, 0.5, it=2), atol=1e-10)


def test_transductive_subtracts_alpha_times_the_curve():
    x, y = _data()
    for alpha in [1.0, 0.5, 2.0]:
        out = LengthDebiaser(alpha=alpha, it=0).fit_transform(x, y)
        np.testing.assert_allclose(out, y - alpha * _plain_lowess(x, y, 0.5), atol=1e-12)


def test_alpha_zero_returns_the_input():
    x, y = _data()
    out = LengthDebiaser(alpha=0.0).fit_transform(x, y)
    np.testing.assert_array_equal(out, y)
    assert out is not y


def test_removes_a_length_bias_and_keeps_the_quality_signal():
    rng = np.random.default_rng(0)
    n = 2000
    length = rng.lognormal(5, 1, size=n)
    quality = rng.normal(size=n)
    reward = quality + 2 * np.log(length)  # a reward model that likes length
    out = LengthDebiaser().fit_transform(length, reward)
    assert abs(np.corrcoef(np.log(length), out)[0, 1]) < 0.05
    assert np.corrcoef(quality, out)[0, 1] > 0.95
    assert np.corrcoef(quality, reward)[0, 1] < 0.5


def test_inductive_interpolates_between_knots_and_is_constant_beyond():
    x, y = _data()
    d = LengthDebiaser(it=0).fit(x, y)
    kx, ky = d.knots_x_, d.knots_y_
    np.testing.assert_array_equal(kx, np.sort(x))
    mid = 0.5 * (kx[:-1] + kx[1:])
    np.testing.assert_allclose(d.bias(mid), 0.5 * (ky[:-1] + ky[1:]), atol=1e-12)
    np.testing.assert_allclose(d.bias([kx[0] - 1e6, kx[-1] + 1e6]), [ky[0], ky[-1]])
    new_r = np.array([1.0, 2.0])
    np.testing.assert_allclose(
        d.transform([kx[0] - 5, kx[-1] + 5], new_r), new_r - np.array([ky[0], ky[-1]])
    )


def test_tied_feature_values_share_one_bias():
    x = np.repeat([10.0, 20.0, 30.0, 40.0, 50.0], 4)
    y = np.random.default_rng(3).normal(size=x.size)
    d = LengthDebiaser().fit(x, y)
    assert d.knots_x_.tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
    b = d.bias(x).reshape(5, 4)
    np.testing.assert_allclose(b, b[:, :1].repeat(4, axis=1))


def test_a_constant_feature_gives_the_mean_reward():
    y = np.array([1.0, 2.0, 6.0])
    d = LengthDebiaser().fit([7.0, 7.0, 7.0], y)
    np.testing.assert_allclose(d.bias([1.0, 7.0, 100.0]), 3.0)
    np.testing.assert_allclose(d.transform([7.0] * 3, y), y - 3.0)


def test_texts_are_measured_by_the_feature():
    texts = ["short", "a much longer answer with words", "# H\n- **a**\n- b"]
    r = np.array([0.1, 0.9, 0.5])
    for feature in ["chars", "words", "markdown"]:
        a = LengthDebiaser(feature=feature, it=0, frac=1.0).fit(texts, r)
        b = LengthDebiaser(feature=feature, it=0, frac=1.0).fit(
            response_features(texts, feature), r
        )
        np.testing.assert_array_equal(a.knots_x_, b.knots_x_)
        np.testing.assert_allclose(
            a.transform(texts, r), b.transform(response_features(texts, feature), r)
        )


def test_tokens_need_counts_from_the_tokenizer():
    with pytest.raises(ValueError, match=r"feature='tokens'.*token_lengths"):
        LengthDebiaser(feature="tokens").fit(["a", "b c"], [0.0, 1.0])
    d = LengthDebiaser(feature="tokens", frac=1.0).fit(
        token_lengths(["a", "b c", "d e f"], str.split), [0, 1, 2]
    )
    assert d.knots_x_.tolist() == [1.0, 2.0, 3.0]


def test_features_from_texts():
    texts = ["ab c", "", "x\ny z"]
    np.testing.assert_array_equal(response_features(texts, "chars"), [4, 0, 5])
    np.testing.assert_array_equal(response_features(texts, "words"), [2, 0, 3])

    class Tok:
        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return list(text)

    np.testing.assert_array_equal(token_lengths(texts, Tok()), [4, 0, 5])
    with pytest.raises(ValueError, match="token_lengths"):
        response_features(texts, "tokens")
    with pytest.raises(TypeError, match="single str"):
        response_features("abc", "chars")


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("plain text, no markdown at all.", 0),
        ("# Title\n## Sub\nbody", 2),
        ("- a\n- b\n* c\n1. d\n2) e", 5),
        ("**bold** and __bold__ and *it*", 3),
        ("`code` and [link](http://x) and ![img](y.png)", 3),
        ("> quote\n| a | b |\n|---|---|", 3),
        ("```python\n# not a header\n- not a list\n```\nafter", 1),
        ("2 * 3 * 4 is not italic", 0),
    ],
)
def test_markdown_element_count(text, count):
    assert markdown_element_count(text) == count


def test_to_dict_round_trips_through_json():
    x, y = _data()
    d = LengthDebiaser(frac=0.4, alpha=0.7, feature="tokens", it=1).fit(x, y)
    data = json.loads(json.dumps(d.to_dict()))
    back = LengthDebiaser.from_dict(data)
    assert back.get_params() == d.get_params()
    new_x = np.linspace(-100, 800, 37)
    new_r = np.linspace(0, 1, 37)
    np.testing.assert_array_equal(back.transform(new_x, new_r), d.transform(new_x, new_r))
    assert back.n_samples_fit_ == 40


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="other"), "not a saved LengthDebiaser"),
        (lambda d: d.update(version=99), "unsupported version 99"),
        (lambda d: d.update(knots_x=d["knots_x"][::-1]), "strictly increasing"),
        (lambda d: d.update(knots_y=d["knots_y"][:-1]), "aligned"),
        (lambda d: d.update(knots_y=[float("nan")] * len(d["knots_x"])), "finite"),
        (lambda d: d.pop("knots_x"), "malformed"),
        (lambda d: d["params"].update(frac=2.0), "'frac' parameter"),
    ],
)
def test_from_dict_rejects_bad_data(mutate, match):
    x, y = _data()
    data = LengthDebiaser().fit(x, y).to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=match):
        LengthDebiaser.from_dict(data)


def test_errors_name_the_parameter_and_the_input():
    x, y = _data()
    with pytest.raises(ValueError, match=r"'frac' parameter of LengthDebiaser"):
        LengthDebiaser(frac=0.0).fit(x, y)
    with pytest.raises(ValueError, match=r"'feature' parameter of LengthDebiaser"):
        LengthDebiaser(feature="bytes").fit(x, y)
    with pytest.raises(
        ValueError, match=r"LengthDebiaser.fit: the rewards must have shape \(40,\)"
    ):
        LengthDebiaser().fit(x, y[:-1])
    with pytest.raises(ValueError, match=r"LengthDebiaser.fit: X contains NaN"):
        LengthDebiaser().fit(np.r_[x[:-1], np.nan], y)
    with pytest.raises(ValueError, match=r"LengthDebiaser.transform: the rewards contain NaN"):
        LengthDebiaser().fit(x, y).transform(x, np.full(40, np.nan))
    with pytest.raises(ValueError, match=r"shape \(n_samples,\) or \(n_samples, 1\)"):
        LengthDebiaser().fit(np.ones((40, 2)), y)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LengthDebiaser().transform(x, y)
    with pytest.raises(NotFittedError):
        LengthDebiaser().to_dict()


def test_a_neighbourhood_of_one_tied_value_is_refused_with_the_frac_to_use():
    x = np.r_[np.zeros(6), 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(
        ValueError, match=r"6 of the 10 responses share one feature value.*above 0.6"
    ):
        LengthDebiaser(frac=0.5).fit(x, np.arange(10.0))
    assert np.all(np.isfinite(LengthDebiaser(frac=0.7).fit(x, np.arange(10.0)).knots_y_))


def test_chained_debiasers_remove_a_length_and_a_markdown_bias():
    rng = np.random.default_rng(1)
    n = 3000
    length = rng.lognormal(5, 0.8, size=n)
    markdown = rng.poisson(3, size=n).astype(float)
    quality = rng.normal(size=n)
    reward = quality + np.log(length) + 0.5 * markdown
    first = LengthDebiaser(feature="chars").fit_transform(length, reward)
    second = LengthDebiaser(feature="markdown").fit_transform(markdown, first)
    assert abs(np.corrcoef(markdown, first)[0, 1]) > 0.4  # the length pass leaves it
    assert abs(np.corrcoef(markdown, second)[0, 1]) < 0.05
    assert abs(np.corrcoef(np.log(length), second)[0, 1]) < 0.05
    assert np.corrcoef(quality, second)[0, 1] > 0.95

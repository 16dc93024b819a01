"""Property-based tests (hypothesis) of the length debiaser."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("statsmodels")

from skebrm import LengthDebiaser

SETTINGS = settings(deadline=None, max_examples=30)


@st.composite
def _sets(draw, min_size=4, max_size=40):
    n = draw(st.integers(min_size, max_size))
    x = draw(arrays(np.float64, n, elements=st.integers(0, 3000).map(float)))
    y = draw(
        arrays(np.float64, n, elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False))
    )
    return x, y


def _fits(x, frac):
    """The debiaser's precondition: no neighbourhood of int(frac n) points is one tied value."""
    _, counts = np.unique(x, return_counts=True)
    return counts.size == 1 or counts.max() < int(frac * x.size + 1e-10)


def _smooth(x, y, frac, it):
    """Robust passes reweight by residual / (6 median |residual|): where that median is ~0
    (a curve through most points exactly) the weights are rounding noise, so the shift
    properties are asked of ``it > 0`` only where the residual scale is not degenerate."""
    if it == 0 or np.unique(x).size == 1:
        return True
    resid = y - LengthDebiaser(frac=frac, it=0).fit(x, y).bias(x)
    return np.median(np.abs(resid)) > 1e-3


_params = st.fixed_dictionaries(
    {
        "frac": st.floats(0.3, 1.0),
        "alpha": st.floats(0.0, 2.0),
        "it": st.integers(0, 3),
    }
)


@SETTINGS
@given(data=_sets(), params=_params, c=st.floats(-100, 100))
def test_adding_a_constant_to_the_rewards_keeps_every_difference(data, params, c):
    x, y = data
    assume(_fits(x, params["frac"]) and _smooth(x, y, params["frac"], params["it"]))
    a = LengthDebiaser(**params).fit_transform(x, y)
    b = LengthDebiaser(**params).fit_transform(x, y + c)
    tol = 1e-8 * (1 + abs(c))
    # the curve moves by c, so every debiased reward moves by (1 - alpha) c ...
    np.testing.assert_allclose(b - a, (1 - params["alpha"]) * c, rtol=0, atol=tol)
    # ... and every pairwise difference (every ranking) is unchanged
    np.testing.assert_allclose(b[:, None] - b[None], a[:, None] - a[None], rtol=0, atol=2 * tol)


@SETTINGS
@given(data=_sets(), params=_params, c=st.floats(-100, 100))
def test_inductive_mode_is_shift_equivariant_too(data, params, c):
    x, y = data
    assume(_fits(x, params["frac"]) and _smooth(x, y, params["frac"], params["it"]))
    new_x = np.linspace(-50.0, 3500.0, 11)
    new_r = np.linspace(-1.0, 1.0, 11)
    a = LengthDebiaser(**params).fit(x, y).transform(new_x, new_r)
    b = LengthDebiaser(**params).fit(x, y + c).transform(new_x, new_r)
    np.testing.assert_allclose(b - a, -params["alpha"] * c, rtol=0, atol=1e-8 * (1 + abs(c)))


@SETTINGS
@given(data=_sets(), frac=st.floats(0.3, 1.0), it=st.integers(0, 3))
def test_alpha_zero_returns_the_input_exactly(data, frac, it):
    x, y = data
    assume(_fits(x, frac))
    d = LengthDebiaser(frac=frac, alpha=0.0, it=it)
    np.testing.assert_array_equal(d.fit_transform(x, y), y)
    np.testing.assert_array_equal(d.transform(x[::-1], y), y)


@SETTINGS
@given(data=_sets(), params=_params)
def test_the_curve_stays_within_the_range_of_the_rewards_and_is_constant_beyond_the_knots(
    data, params
):
    x, y = data
    assume(_fits(x, params["frac"]))
    d = LengthDebiaser(**params).fit(x, y)
    lo, hi = x.min(), x.max()
    np.testing.assert_array_equal(d.bias([lo - 1e4, lo - 1.0]), d.bias([lo, lo]))
    np.testing.assert_array_equal(d.bias([hi + 1.0, hi + 1e4]), d.bias([hi, hi]))
    assert np.all(np.isfinite(d.bias(x)))

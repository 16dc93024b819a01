"""Property-based tests (hypothesis) on the energy, its ascent and its grid statistics."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skebrm import EnergyRewardCalibrator, GridDistribution
from skebrm import _inference as inf
from skebrm.energy import BasisEnergyNet, EnergyNet

TORCH = settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
FITTED = settings(
    deadline=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _random_net(seed: int, kind: str):
    torch.manual_seed(seed)
    if kind == "basis":
        net = BasisEnergyNet(4, hidden=(8,), n_basis=6, low=-6, high=6)
    else:
        net = EnergyNet(4, reward_hidden=(4, 8), hidden=(8, 4))
    return net.double().eval()


@TORCH
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["mlp", "basis"]),
    starts=arrays(np.float64, st.integers(1, 6), elements=st.floats(-12, 12)),
    step=st.floats(0.01, 3.0),
    shrink=st.floats(0.05, 0.9),
)
def test_ascent_never_lowers_the_energy(seed, kind, starts, step, shrink):
    net = _random_net(seed, kind)
    h = net.embed(torch.randn(len(starts), 4, dtype=torch.float64))
    r0 = torch.as_tensor(starts)
    r, f, path = inf.ascend(
        net, h, r0, max_steps=15, step_size=step, shrink=shrink, return_path=True
    )
    with torch.no_grad():  # the ascent's own evaluation (sigmoid form, no autograd)
        f0 = net.energy_from_embedded(h, r0[:, None])[:, 0]
        f_end = net.energy_from_embedded(h, r[:, None])[:, 0]
    assert torch.all(path[1:] >= path[:-1])
    assert torch.all(f >= f0)
    torch.testing.assert_close(f, f_end)
    # the autograd form of the same network agrees to round-off
    torch.testing.assert_close(f, net.energy_from_embedded(h, r[:, None])[:, 0].detach())


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    y = X[:, 0] + 0.5 * rng.normal(size=300)
    cal = EnergyRewardCalibrator(
        hidden=(16, 8),
        reward_hidden=(4, 8),
        n_negatives=32,
        max_epochs=4,
        learning_rate=3e-3,
        grid_size=96,
        random_state=0,
    ).fit(X, y)
    return cal, X, y


@FITTED
@given(data=st.data())
def test_refined_reward_has_at_least_the_energy_of_the_base_reward(fitted, data):
    cal, X, y = fitted
    rows = data.draw(st.lists(st.integers(0, len(X) - 1), min_size=1, max_size=8))
    # base rewards inside and far outside the trusted range
    base = np.array(data.draw(st.lists(st.floats(-20, 20), min_size=len(rows), max_size=len(rows))))
    refined = cal.predict(X[rows], base_reward=base)
    assert np.all(cal.predict_energy(X[rows], refined) >= cal.predict_energy(X[rows], base))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(FITTED, max_examples=6)
@given(data=st.data())
def test_predictions_do_not_depend_on_batch_composition(fitted, data, dtype):
    # Bit for bit, in both precisions: every product sees whole row tiles (ROW_TILE).
    cal, X, y = fitted
    cal.set_params(inference_dtype=dtype)
    full_mode = cal.predict(X[:40], base_reward=y[:40])
    full_global = cal.predict(X[:40])
    full_std = cal.score_uncertainty(X[:40])
    rows = np.array(data.draw(st.permutations(range(40)))[: data.draw(st.integers(1, 40))])
    cal_small = EnergyRewardCalibrator(**{**cal.get_params(), "inference_batch_size": 7})
    cal_small.__dict__.update({k: v for k, v in cal.__dict__.items() if k.endswith("_")})
    try:
        for est in (cal, cal_small):
            np.testing.assert_array_equal(
                est.predict(X[rows], base_reward=y[rows]), full_mode[rows]
            )
            np.testing.assert_array_equal(est.predict(X[rows]), full_global[rows])
            np.testing.assert_array_equal(est.score_uncertainty(X[rows]), full_std[rows])
    finally:
        cal.set_params(inference_dtype="float32")


def _dist(f, low, high):
    return GridDistribution(f, low=low, width=(high - low) / f.shape[1])


energies = arrays(
    np.float64, st.tuples(st.integers(1, 4), st.integers(16, 64)), elements=st.floats(-30, 30)
)


@settings(deadline=None, max_examples=100)
@given(f=energies, levels=st.lists(st.floats(0.001, 0.999), min_size=2, max_size=6, unique=True))
def test_quantiles_rise_with_their_level_and_intervals_nest(f, levels):
    d = _dist(f, -5.0, 5.0)
    levels = np.sort(levels)
    q = d.quantiles(levels)
    assert np.all(np.diff(q, axis=1) >= 0)
    assert np.all((q >= -5.0) & (q <= 5.0))
    np.testing.assert_allclose(d.cdf(q[:, 0]), levels[0], atol=1e-9)  # the CDF inverts them
    inner = d.quantiles([0.25, 0.75])
    outer = d.quantiles([0.05, 0.95])
    assert np.all(outer[:, 0] <= inner[:, 0]) and np.all(inner[:, 1] <= outer[:, 1])


@settings(deadline=None, max_examples=100)
@given(f=energies)
def test_uncertainty_is_non_negative_and_bounded_by_the_grid(f):
    std = _dist(f, -5.0, 5.0).std()
    assert np.all(std >= 0) and np.all(std <= 5.0 + 1e-9)


@settings(deadline=None, max_examples=200)
@given(
    slopes=st.lists(st.floats(-5, 5), min_size=1, max_size=5),
    offsets=st.lists(st.floats(-10, 10), min_size=5, max_size=5),
    curvature=st.floats(0, 3),
    factor=st.floats(1.0, 20.0),
)
def test_sharpening_a_log_concave_energy_never_raises_uncertainty(
    slopes, offsets, curvature, factor
):
    """``f → k·f`` with ``k > 1`` (a sharper energy) never widens a unimodal p(r|e)."""
    c, w = inf.make_grid(-8.0, 8.0, 400)
    a = np.asarray(slopes)[:, None]
    b = np.asarray(offsets[: len(slopes)])[:, None]
    f = np.min(a * c + b, axis=0) - curvature * c**2  # concave: min of affine, minus a bowl
    s1 = _dist(f[None], -8.0, 8.0).std()
    sk = _dist(factor * f[None], -8.0, 8.0).std()
    assert sk[0] <= s1[0] * (1 + 1e-9) + 1e-12


def test_sharpening_a_multimodal_energy_can_raise_uncertainty():
    """Documented limit of the property above: with two separated modes, sharpening moves
    mass from the broad low mode to the narrow high one and the spread first grows."""
    c, w = inf.make_grid(-10.0, 10.0, 400)
    f = np.where(np.abs(c) < 1.0, 0.0, -5.0)
    f[np.argmin(np.abs(c - 9.0))] = 0.5
    stds = [_dist(k * f[None], -10.0, 10.0).std()[0] for k in (1.0, 8.0)]
    assert stds[1] > stds[0]


@settings(deadline=None, max_examples=3)
@given(seed=st.integers(0, 2**16))
def test_same_random_state_gives_the_same_fit(seed):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = X[:, 0] + rng.normal(size=64)
    params = dict(hidden=(8,), reward_hidden=(4,), n_negatives=8, max_epochs=1, grid_size=16)
    a = EnergyRewardCalibrator(**params, random_state=seed).fit(X, y)
    b = EnergyRewardCalibrator(**params, random_state=seed).fit(X, y)
    for va, vb in zip(a.module_.state_dict().values(), b.module_.state_dict().values()):
        assert torch.equal(va, vb)
    np.testing.assert_array_equal(a.predict(X, base_reward=y), b.predict(X, base_reward=y))

"""The ascent, grid energies and padding against closed forms and plain loops."""

import numpy as np
import pytest
import torch

from skebrm import _inference as inf


class QuadraticEnergy:
    """f(e, r) = −a·(r − m)² with h = [m, a] per row: a Gaussian N(m, 1/(2a))."""

    def energy_from_embedded(self, h, r):
        return -h[:, 1:2] * (r - h[:, :1]) ** 2


def test_grid_is_cell_centred():
    c, w = inf.make_grid(-1.0, 1.0, 4)
    assert w == 0.5
    np.testing.assert_allclose(c, [-0.75, -0.25, 0.25, 0.75])


def test_ascend_reaches_the_mode_monotonically():
    h = torch.tensor([[2.0, 0.5], [-3.0, 2.0], [0.0, 0.1]])
    r0 = torch.tensor([-1.0, 4.0, 0.0])
    r, f, path = inf.ascend(QuadraticEnergy(), h, r0, max_steps=200, return_path=True)
    np.testing.assert_allclose(r.numpy(), [2.0, -3.0, 0.0], atol=1e-4)
    assert torch.all(path[1:] >= path[:-1])
    np.testing.assert_allclose(f.numpy(), path[-1].numpy())


def test_ascend_zero_steps_returns_start():
    h = torch.tensor([[2.0, 0.5]])
    r, _ = inf.ascend(QuadraticEnergy(), h, torch.tensor([0.3]), max_steps=0)
    assert r.item() == pytest.approx(0.3)


def test_grid_newton_step_is_the_inverse_curvature_of_a_quadratic():
    h = torch.tensor([[1.3, 0.5], [-2.0, 4.0], [0.0, 0.01]], dtype=torch.float64)
    centres, width = inf.make_grid(-6.0, 6.0, 240)
    grid = torch.as_tensor(centres)
    f = QuadraticEnergy().energy_from_embedded(h, grid.expand(3, -1))
    steps = inf.grid_newton_steps(f, width)
    # f'' = −2a exactly for a quadratic: the step is 1 / (2a)
    np.testing.assert_allclose(steps.numpy(), 1 / (2 * h[:, 1].numpy()), rtol=1e-9)
    # one step from the best grid point lands on the vertex; the ascent then stops
    start = grid[f.argmax(dim=1)]
    r, _, path = inf.ascend(
        QuadraticEnergy(), h, start, step_size=steps, tol=1e-4 * width, return_path=True
    )
    np.testing.assert_allclose(r.numpy(), h[:, 0].numpy(), atol=1e-12)
    assert path.shape[0] <= 4  # start, one move, the stop


def test_grid_newton_step_falls_back_to_the_cell_width_on_flat_or_convex_tops():
    f = torch.tensor([[0.0, 1.0, 1.0, 0.0], [2.0, 1.0, 0.5, 1.5], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(
        inf.grid_newton_steps(f, 0.25).numpy(), [0.25 / 1.0 * 0.25, 0.25, 0.25]
    )


def test_frozen_rows_do_not_move_and_do_not_depend_on_other_rows():
    h = torch.tensor([[2.0, 0.5], [-3.0, 0.001]], dtype=torch.float64)
    r0 = torch.tensor([1.0, 4.0], dtype=torch.float64)
    both, _ = inf.ascend(QuadraticEnergy(), h, r0, max_steps=30, tol=1e-3)
    alone, _ = inf.ascend(QuadraticEnergy(), h[:1], r0[:1], max_steps=30, tol=1e-3)
    assert both[0].item() == alone[0].item()


def test_pad_rows_and_tiles():
    t = torch.arange(6.0).reshape(3, 2)
    p = inf.pad_rows(t, inf.tile_rows(3))
    assert p.shape == (inf.ROW_TILE, 2) and torch.equal(p[:3], t) and not p[3:].any()
    assert inf.pad_rows(t, 3) is t
    assert inf.tile_rows(inf.ROW_TILE) == inf.ROW_TILE and inf.tile_rows(0) == 0


def test_bounds_keep_the_ascent_inside_and_stop_rows_pinned_at_a_bound():
    # modes at 5 and −5, ascent confined to [−1, 1]: rows end on the near bound
    h = torch.tensor([[5.0, 1.0], [-5.0, 1.0], [0.2, 1.0]])
    r, f = inf.ascend(QuadraticEnergy(), h, torch.tensor([0.0, 3.0, 0.0]), bounds=(-1.0, 1.0))
    torch.testing.assert_close(r, torch.tensor([1.0, -1.0, 0.2]))
    assert torch.all(r.abs() <= 1.0)

"""Synthetic embedded preference pairs for tests and the CI multirun (no model needed)."""

from __future__ import annotations

import numpy as np

from skebrm.experiments.data import EmbeddedPairs

__all__ = ["make_synthetic_pairs"]


def make_synthetic_pairs(
    *,
    n_pairs: int = 400,
    n_features: int = 16,
    pairs_per_prompt: int = 2,
    n_subsets: int = 4,
    rm_noise: float = 0.5,
    label_temperature: float = 0.5,
    random_state: int | None = 0,
) -> EmbeddedPairs:
    """Embeddings whose true reward is linear, with Bradley–Terry labels and a noisy RM.

    The true reward is ``r* = X·w`` (``‖w‖ = 1`` after scaling). The label of a pair
    prefers response ``a`` with probability ``sigmoid((r*_a − r*_b) / label_temperature)``;
    the "frozen RM" reward stored in ``rewards`` is ``r* + rm_noise·ε``. Subsets
    ``s0, s1, ...`` alternate between the sections ``A`` and ``B``.

    Returns
    -------
    EmbeddedPairs
    """
    for name, value in (("n_pairs", n_pairs), ("n_features", n_features)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"make_synthetic_pairs: {name} must be a positive int, got {value!r}.")
    rng = np.random.default_rng(random_state)
    w = rng.normal(size=n_features)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(2 * n_pairs, n_features)).astype(np.float32)
    r_true = X @ w
    logit = (r_true[0::2] - r_true[1::2]) / label_temperature
    first_wins = rng.random(n_pairs) < 1.0 / (1.0 + np.exp(-logit))
    rows = np.arange(2 * n_pairs).reshape(-1, 2)
    rows[~first_wins] = rows[~first_wins, ::-1]  # chosen first
    rows = rows.ravel()
    rm = (r_true + rm_noise * rng.normal(size=2 * n_pairs)).astype(np.float32)
    subset_idx = rng.integers(0, n_subsets, size=n_pairs)
    return EmbeddedPairs(
        embeddings=X[rows],
        rewards=rm[rows],
        prompt=np.array([f"prompt-{i // pairs_per_prompt}" for i in range(n_pairs)], object),
        subset=np.array([f"s{k}" for k in subset_idx], dtype=object),
        section=np.array(["A" if k % 2 == 0 else "B" for k in subset_idx], dtype=object),
    )

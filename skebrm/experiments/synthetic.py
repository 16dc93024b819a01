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
    n_annotators: int = 1,
    rejected_per_chosen: int = 1,
    random_state: int | None = 0,
) -> EmbeddedPairs:
    """Embeddings whose true reward is linear, with Bradley–Terry labels and a noisy RM.

    The true reward is ``r* = X·w`` (``‖w‖ = 1`` after scaling). Each annotator prefers
    response ``a`` of a pair with probability ``sigmoid((r*_a − r*_b) / label_temperature)``;
    the label is the majority of ``n_annotators`` votes, and with more than one annotator
    ``disagreement`` marks the pairs whose votes were not unanimous. The "frozen RM"
    reward stored in ``rewards`` is ``r* + rm_noise·ε`` (one value per distinct response).
    Subsets ``s0, s1, ...`` alternate between the sections ``A`` and ``B``.

    With ``rejected_per_chosen = m > 1``, each block of ``m`` consecutive pairs (one
    prompt) shares its first response, so the pairs where that response wins form
    best-of-k groups with up to ``m`` rejected responses (``response_key`` tells the
    responses apart). ``pairs_per_prompt`` must then be a multiple of ``m``.

    Returns
    -------
    EmbeddedPairs
    """
    for name, value in (
        ("n_pairs", n_pairs),
        ("n_features", n_features),
        ("n_annotators", n_annotators),
        ("rejected_per_chosen", rejected_per_chosen),
    ):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"make_synthetic_pairs: {name} must be a positive int, got {value!r}.")
    if n_annotators % 2 == 0:
        raise ValueError(
            f"make_synthetic_pairs: n_annotators must be odd (a strict majority), got "
            f"{n_annotators!r}."
        )
    if pairs_per_prompt % rejected_per_chosen:
        raise ValueError(
            "make_synthetic_pairs: pairs_per_prompt must be a multiple of rejected_per_chosen "
            f"(the pairs that share a response share a prompt), got {pairs_per_prompt!r} and "
            f"{rejected_per_chosen!r}."
        )
    rng = np.random.default_rng(random_state)
    w = rng.normal(size=n_features)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(2 * n_pairs, n_features)).astype(np.float32)
    # response a of every pair in a block is the block's first response
    source = np.arange(2 * n_pairs)
    pair = np.arange(n_pairs)
    source[0::2] = 2 * (pair - pair % rejected_per_chosen)
    X = X[source]
    r_true = X @ w
    logit = (r_true[0::2] - r_true[1::2]) / label_temperature
    p_first = 1.0 / (1.0 + np.exp(-logit))
    disagreement = None
    if n_annotators == 1:
        first_wins = rng.random(n_pairs) < p_first
    else:
        votes = rng.random((n_pairs, n_annotators)) < p_first[:, None]
        first_wins = 2 * votes.sum(axis=1) > n_annotators
        disagreement = (votes.any(axis=1) & ~votes.all(axis=1)).astype(np.float64)
    rows = np.arange(2 * n_pairs).reshape(-1, 2)
    rows[~first_wins] = rows[~first_wins, ::-1]  # chosen first
    rows = rows.ravel()
    rm = (r_true + rm_noise * rng.normal(size=2 * n_pairs)[source]).astype(np.float32)
    subset_idx = rng.integers(0, n_subsets, size=n_pairs)
    return EmbeddedPairs(
        embeddings=X[rows],
        rewards=rm[rows],
        prompt=np.array([f"prompt-{i // pairs_per_prompt}" for i in range(n_pairs)], object),
        subset=np.array([f"s{k}" for k in subset_idx], dtype=object),
        section=np.array(["A" if k % 2 == 0 else "B" for k in subset_idx], dtype=object),
        response_key=source[rows].astype(np.int64),
        disagreement=disagreement,
    )

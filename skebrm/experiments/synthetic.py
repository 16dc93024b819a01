"""Synthetic embedded preference pairs for tests and the CI multirun (no model needed)."""

from __future__ import annotations

import numpy as np

from skebrm.experiments.data import EmbeddedPairs

__all__ = ["make_synthetic_best_of_n", "make_synthetic_pairs"]


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


def make_synthetic_best_of_n(
    context=None,
    *,
    n_train_prompts: int = 60,
    n_train_samples: int = 8,
    n_eval_prompts: int = 40,
    n_eval_samples: int = 16,
    n_features: int = 8,
    curvature: float = 0.5,
    random_state: int | None = None,
):
    """Best-of-n data drawn in place of generations: a gold reward that a proxy over-optimises.

    Every sample's features are ``x ~ N(0, I)`` (``n_features ≥ 2``); the gold reward is
    ``t + 0.2·v·x − curvature·t²`` with ``t = w·x`` for two orthogonal unit vectors ``w``
    and ``v``: it rises with ``t`` up to ``t = 1 / (2·curvature)``, then falls. A proxy
    fitted on gold-labelled pairs learns "more ``t`` is better" from the bulk of the
    pairs, so best-of-n on it raises the gold reward at small ``n`` and lowers it at
    large ``n`` (over-optimisation), in seconds, for tests and CI.

    Parameters
    ----------
    context : BestOfNContext, optional
        Its ``seed`` is used when ``random_state`` is None.
    n_train_prompts, n_train_samples, n_eval_prompts, n_eval_samples, n_features : int
    curvature : float, default=0.5
    random_state : int, optional

    Returns
    -------
    BestOfNData
    """
    from skebrm.experiments.bon_data import BestOfNData

    if not isinstance(n_features, (int, np.integer)) or n_features < 2:
        raise ValueError(
            f"make_synthetic_best_of_n: n_features must be an int >= 2, got {n_features!r}."
        )
    seed = random_state if random_state is not None else getattr(context, "seed", 0)
    rng = np.random.default_rng(seed)

    def draw(n_prompts, n_samples):
        X = rng.normal(size=(n_prompts, n_samples, n_features))
        t = X[..., 0]
        gold = t + 0.2 * X[..., 1] - curvature * t**2
        return X.astype(np.float32), gold

    train = draw(n_train_prompts, n_train_samples)
    evaluation = draw(n_eval_prompts, n_eval_samples)
    info = {
        "source": "synthetic",
        "train_prompts": n_train_prompts,
        "train_samples_per_prompt": n_train_samples,
        "eval_prompts": n_eval_prompts,
        "eval_samples_per_prompt": n_eval_samples,
        "curvature": float(curvature),
    }
    return BestOfNData(*train, *evaluation, info=info)

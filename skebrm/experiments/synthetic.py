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
    n_annotators: int = 1,
    rejected_per_chosen: int = 1,
    length_bias: float = 0.3,
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

    Each response also gets a length in characters,
    ``round(200 · exp(length_bias · r* + 0.5 z))`` with ``z ~ N(0, 1)``, and a markdown
    count ``Poisson(1 + length / 400)``, drawn from a second random stream (seeded from
    ``random_state``), so that the other draws do not depend on them. With
    ``length_bias > 0`` the preferred response is longer more often than not, as in
    human preference data.

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
    side = np.random.default_rng(None if random_state is None else [int(random_state), 1])
    z = side.normal(size=2 * n_pairs)[source]
    length = np.round(200.0 * np.exp(float(length_bias) * r_true + 0.5 * z))
    markdown = side.poisson(1.0 + length / 400.0)[source].astype(np.float64)
    return EmbeddedPairs(
        embeddings=X[rows],
        rewards=rm[rows],
        prompt=np.array([f"prompt-{i // pairs_per_prompt}" for i in range(n_pairs)], object),
        subset=np.array([f"s{k}" for k in subset_idx], dtype=object),
        section=np.array(["A" if k % 2 == 0 else "B" for k in subset_idx], dtype=object),
        response_key=source[rows].astype(np.int64),
        disagreement=disagreement,
        length=length[rows],
        markdown=markdown[rows],
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

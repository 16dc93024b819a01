"""Text rewards for GRPO: a frozen RM's own reward, or a fitted proxy on its embeddings.

A :class:`TextReward` runs a reward model through an
:class:`~skebrm.extraction.EmbeddingExtractor` (the extraction settings the best-of-n
study's caches use) and returns either the RM's own reward (the gold RM) or a fitted
scorer of its embeddings (a proxy of :func:`skebrm.experiments.overoptimization.fit_proxies`:
the base head, EBRM's refined − λ·std, an ensemble, ...). It is a TRL reward function,
called as ``f(prompts=..., completions=..., **kwargs)`` (see
:mod:`skebrm.integrations.trl` for how conversations become text), and scores plain
strings with :meth:`TextReward.score`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["TextReward"]


class TextReward:
    """A reward of ``(prompt, completion)`` text from a frozen RM (and a fitted scorer).

    Parameters
    ----------
    extractor : EmbeddingExtractor
        Fitted; runs the RM.
    scorer : callable or None, default=None
        ``scorer(embeddings) -> rewards``; ``None`` returns the RM's own reward.
    name : str, default="reward"
        The ``__name__`` TRL logs the reward under.

    Notes
    -----
    When the dataset has a ``prompt_text`` column, TRL passes it with every call and the
    RM scores those strings as prompts (the exact prompts the proxies were fitted on)
    rather than the flattened chat messages.
    """

    def __init__(self, extractor, scorer: Callable | None = None, *, name: str = "reward"):
        self.extractor = extractor
        self.scorer = scorer
        self.__name__ = name

    def __repr__(self) -> str:
        kind = "rm" if self.scorer is None else "scorer"
        return f"TextReward(name={self.__name__!r}, {kind})"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Rewards of the rows (float64); a row whose prompt and completion are both empty
        is ``nan``."""
        prompts, completions = [str(p) for p in prompts], [str(c) for c in completions]
        if len(prompts) != len(completions):
            raise ValueError(
                f"TextReward.score: prompts and completions must have the same length, got "
                f"{len(prompts)} and {len(completions)}."
            )
        out = np.full(len(prompts), np.nan)
        keep = [i for i, (p, c) in enumerate(zip(prompts, completions)) if p.strip() or c.strip()]
        if not keep:
            return out
        res = self.extractor.extract([(prompts[i], completions[i]) for i in keep])
        values = res.rewards if self.scorer is None else self.scorer(res.embeddings)
        out[keep] = np.asarray(values, dtype=np.float64)
        return out

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs):
        """One reward per completion (TRL's reward-function convention); ``None`` for a row
        with nothing to score."""
        from skebrm.integrations.trl import to_rows

        p, c = to_rows(prompts, completions, caller=f"TextReward({self.__name__!r})")
        if kwargs.get("prompt_text") is not None:
            p = [str(x) for x in kwargs["prompt_text"]]
        return [float(r) if np.isfinite(r) else None for r in self.score(p, c)]

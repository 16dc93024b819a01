"""Best-of-n: the expected gold reward of the sample a proxy reward picks among n.

The functional core of the over-optimisation study (Gao et al. 2023, "Scaling Laws for
Reward Model Overoptimization"; Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization"): each prompt has ``N`` policy samples scored by a proxy reward and by
a gold reward; best-of-n keeps the proxy's favourite of ``n`` samples, and the curve of
its expected gold reward against :func:`kl_best_of_n` shows whether optimising the proxy
harder keeps improving the gold reward or starts to hurt it (reward hacking).

The estimator uses all ``N ≥ n`` samples of a prompt, without drawing subsets: with the
samples sorted by proxy score, ascending, as ``g_(1) … g_(N)``, the ``i``-th is the
proxy's pick of a uniformly random ``n``-subset with probability
``C(i − 1, n − 1) / C(N, n)``, so

    R(n) = Σ_{i=n..N} C(i − 1, n − 1) / C(N, n) · g_(i)

is the exact expectation over subsets (an unbiased estimate of the policy's best-of-n
gold reward). Samples tied in proxy score share the weight of the positions they occupy
evenly (a random tie-break), and the gold scores are always reordered together with the
proxy's order. The weights are computed from log-gamma, so large ``N`` is safe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Integral
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln
from sklearn.utils import check_random_state

__all__ = [
    "BestOfNCurve",
    "best_of_n",
    "best_of_n_curve",
    "best_of_n_per_prompt",
    "best_of_n_weights",
    "kl_best_of_n",
    "plot_best_of_n",
]


class BestOfNCurve(NamedTuple):
    """Best-of-n gold reward per ``n``, with a percentile bootstrap interval over prompts.

    Parameters
    ----------
    n : ndarray of shape (n_points,)
        The best-of-n sizes.
    kl : ndarray of shape (n_points,)
        :func:`kl_best_of_n` of each ``n``.
    mean, ci_low, ci_high, std_error : ndarray of shape (n_points,)
        Mean over prompts of the per-prompt estimates, the interval's ends and the
        bootstrap standard error.
    per_prompt : ndarray of shape (n_prompts, n_points)
        The per-prompt estimates (:func:`best_of_n_per_prompt`).
    n_resamples : int
        Bootstrap resamples of the prompts.
    confidence : float
        Two-sided coverage of the interval.
    """

    n: np.ndarray
    kl: np.ndarray
    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    std_error: np.ndarray
    per_prompt: np.ndarray
    n_resamples: int
    confidence: float

    def peak(self) -> dict:
        """The ``n`` of the highest mean gold reward, its KL and gold, and gold at the last n.

        Returns
        -------
        dict
            ``peak_n``, ``peak_kl``, ``peak_gold``, ``final_n`` and ``final_gold``.
        """
        i = int(np.argmax(self.mean))
        return {
            "peak_n": int(self.n[i]),
            "peak_kl": float(self.kl[i]),
            "peak_gold": float(self.mean[i]),
            "final_n": int(self.n[-1]),
            "final_gold": float(self.mean[-1]),
        }


def kl_best_of_n(n):
    """``log n − (n − 1) / n``: the KL of best-of-n to the policy, as usually plotted.

    This is the analytical formula of Stiennon et al. (2020) used on the x-axis of
    over-optimisation plots. It is an **upper bound** on the KL divergence between the
    best-of-n distribution and the policy (Beirami et al. 2024, "Theoretical guarantees
    on the best-of-n alignment policy"), reached when the policy's outputs are all
    distinct; with repeated samples the true KL is smaller.

    Parameters
    ----------
    n : int or array-like of int
        Best-of-n sample counts, each ``≥ 1``.

    Returns
    -------
    float or ndarray
        One value per ``n`` (a float for a scalar ``n``); 0 at ``n = 1``.

    Examples
    --------
    >>> round(kl_best_of_n(4), 4)
    0.6363
    """
    arr = np.asarray(n)
    if arr.dtype.kind not in "iu" or np.any(arr < 1):
        raise ValueError(f"kl_best_of_n: n must be an int >= 1 or an array of them, got {n!r}.")
    arr = arr.astype(np.float64)
    out = np.log(arr) - (arr - 1.0) / arr
    return float(out) if out.ndim == 0 else out


def _check_scores(proxy, gold, caller: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, value in (("proxy", proxy), ("gold", gold)):
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(
                f"{caller}: {name} must be a 2-D array of shape (n_prompts, n_samples) with at "
                f"least one prompt and one sample, got shape {arr.shape}."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{caller}: {name} must be finite, got NaN or infinite values.")
        arrays.append(arr)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"{caller}: proxy and gold must have the same shape, got {arrays[0].shape} and "
            f"{arrays[1].shape}."
        )
    return arrays[0], arrays[1]


def _check_ns(ns, n_samples: int, caller: str) -> np.ndarray:
    arr = np.asarray(ns)
    if (
        arr.ndim != 1
        or len(arr) == 0
        or arr.dtype.kind not in "iu"
        or np.any(arr < 1)
        or np.any(arr > n_samples)
    ):
        raise ValueError(
            f"{caller}: ns must be a non-empty 1-D sequence of ints in [1, n_samples="
            f"{n_samples}], got {ns!r}."
        )
    return arr.astype(np.int64)


def best_of_n_weights(n: int, n_samples: int) -> np.ndarray:
    """``C(i − 1, n − 1) / C(N, n)`` for ``i = 1 … N``: the chance that rank ``i`` is picked.

    ``i`` is the rank of a sample in ascending proxy order among ``N = n_samples``; the
    weights are 0 below ``i = n`` and sum to 1. Computed in log space (log-gamma).

    Parameters
    ----------
    n : int
        The best-of-n size, in ``[1, n_samples]``.
    n_samples : int
        Samples per prompt ``N``, >= 1.

    Returns
    -------
    ndarray of shape (n_samples,)
        The weight of each rank, lowest proxy score first.

    Examples
    --------
    >>> best_of_n_weights(2, 3).round(4).tolist()
    [0.0, 0.3333, 0.6667]
    """
    if not isinstance(n_samples, Integral) or n_samples < 1:
        raise ValueError(f"best_of_n_weights: n_samples must be an int >= 1, got {n_samples!r}.")
    if not isinstance(n, Integral) or not 1 <= n <= n_samples:
        raise ValueError(
            f"best_of_n_weights: n must be an int in [1, n_samples={n_samples}], got {n!r}."
        )
    i = np.arange(n, n_samples + 1, dtype=np.float64)
    log_w = (
        gammaln(i) - gammaln(n) - gammaln(i - n + 1)
        - (gammaln(n_samples + 1) - gammaln(n + 1) - gammaln(n_samples - n + 1))
    )  # fmt: skip
    w = np.zeros(n_samples)
    w[n - 1 :] = np.exp(log_w)
    return w


def best_of_n_per_prompt(proxy, gold, ns: Sequence[int]) -> np.ndarray:
    """Per-prompt best-of-n estimates ``R_p(n)`` (see the module docstring).

    Parameters
    ----------
    proxy, gold : array-like of shape (n_prompts, N)
        Proxy and gold rewards of the same ``N`` samples of each prompt.
    ns : sequence of int
        Best-of-n sizes, each in ``[1, N]``.

    Returns
    -------
    ndarray of shape (n_prompts, len(ns))
        The expected gold reward of the proxy's pick among ``n`` samples, per prompt.
    """
    proxy, gold = _check_scores(proxy, gold, "best_of_n_per_prompt")
    n_prompts, n_samples = proxy.shape
    ns = _check_ns(ns, n_samples, "best_of_n_per_prompt")
    order = np.argsort(proxy, axis=1, kind="stable")
    sorted_proxy = np.take_along_axis(proxy, order, axis=1)
    sorted_gold = np.take_along_axis(gold, order, axis=1)  # the gold follows the proxy's order
    # Tie groups: consecutive equal proxy scores in a row; key = row * N + group index.
    new_group = np.ones_like(sorted_proxy, dtype=bool)
    new_group[:, 1:] = sorted_proxy[:, 1:] != sorted_proxy[:, :-1]
    group = np.cumsum(new_group, axis=1) - 1
    key = (np.arange(n_prompts)[:, None] * n_samples + group).ravel()
    has_ties = not new_group.all()
    counts = np.bincount(key, minlength=n_prompts * n_samples) if has_ties else None
    out = np.empty((n_prompts, len(ns)))
    for j, n in enumerate(ns):
        w = np.broadcast_to(best_of_n_weights(int(n), n_samples), sorted_gold.shape)
        if has_ties:
            sums = np.bincount(key, weights=w.ravel(), minlength=n_prompts * n_samples)
            w = (sums[key] / counts[key]).reshape(sorted_gold.shape)
        out[:, j] = np.sum(w * sorted_gold, axis=1)
    return out


def best_of_n(proxy, gold, ns: Sequence[int]) -> np.ndarray:
    """Expected gold reward of the proxy's pick among ``n`` samples, averaged over prompts.

    Parameters
    ----------
    proxy, gold : array-like of shape (n_prompts, N)
        Proxy and gold rewards of the same ``N`` samples of each prompt.
    ns : sequence of int
        Best-of-n sizes, each in ``[1, N]``.

    Returns
    -------
    ndarray of shape (len(ns),)
        The unbiased estimate that uses all ``N`` samples of each prompt (weights
        ``C(i − 1, n − 1) / C(N, n)`` on the proxy-sorted gold rewards; ties in proxy
        score split their weight evenly). :func:`best_of_n_per_prompt` gives the
        per-prompt values, :func:`best_of_n_curve` a bootstrap interval over prompts.

    Examples
    --------
    >>> import numpy as np
    >>> proxy = np.array([[0.1, 0.5, 0.3]])
    >>> gold = np.array([[1.0, 0.0, 2.0]])
    >>> best_of_n(proxy, gold, [1, 2, 3]).round(4).tolist()  # n = 3: the proxy's top
    [1.0, 0.6667, 0.0]
    """
    return best_of_n_per_prompt(proxy, gold, ns).mean(axis=0)


def best_of_n_curve(
    proxy,
    gold,
    ns: Sequence[int],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state=None,
) -> BestOfNCurve:
    """:func:`best_of_n` with a percentile bootstrap interval over prompts.

    Prompts are resampled with replacement (every ``n`` on the same resample, so the
    bands of one curve are consistent with one another).

    Parameters
    ----------
    proxy, gold : array-like of shape (n_prompts, N)
        Proxy and gold rewards of the same ``N`` samples of each prompt.
    ns : sequence of int
        Best-of-n sizes, each in ``[1, N]``.
    n_resamples : int, default=2000
        Bootstrap resamples of the prompts.
    confidence : float, default=0.95
        Two-sided coverage of the interval, in (0, 1).
    random_state : int, RandomState instance or None
        Seeds the resampling.

    Returns
    -------
    BestOfNCurve
        The curve, its bootstrap interval and the per-prompt estimates.
    """
    if not isinstance(n_resamples, Integral) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(
            f"best_of_n_curve: n_resamples must be a positive int, got {n_resamples!r}."
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"best_of_n_curve: confidence must be in (0, 1), got {confidence!r}.")
    per_prompt = best_of_n_per_prompt(proxy, gold, ns)
    ns = np.asarray(ns, dtype=np.int64)
    rng = check_random_state(random_state)
    n_prompts = per_prompt.shape[0]
    stats = np.empty((n_resamples, per_prompt.shape[1]))
    chunk = max(1, 2_000_000 // (n_prompts * per_prompt.shape[1]))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.randint(0, n_prompts, size=(stop - start, n_prompts))
        stats[start:stop] = per_prompt[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha], axis=0)
    return BestOfNCurve(
        n=ns,
        kl=np.asarray(kl_best_of_n(ns), dtype=np.float64),
        mean=per_prompt.mean(axis=0),
        ci_low=low,
        ci_high=high,
        std_error=stats.std(axis=0, ddof=1) if n_resamples > 1 else np.zeros(len(ns)),
        per_prompt=per_prompt,
        n_resamples=int(n_resamples),
        confidence=float(confidence),
    )


def plot_best_of_n(
    curves: dict[str, BestOfNCurve],
    path: str | os.PathLike | None = None,
    *,
    title: str = "Best-of-n: gold reward of the proxy's pick",
    ylabel: str = "gold reward",
):
    """Gold reward against ``kl_best_of_n(n)``, one line with its bootstrap band per proxy.

    Parameters
    ----------
    curves : dict of str to BestOfNCurve
        Proxy name to its curve (an ``"oracle"`` entry is drawn dashed, as the ceiling).
    path : path-like, optional
        Where to write the figure (atomically); the format follows the suffix.
    title : str, default="Best-of-n: gold reward of the proxy's pick"
        The axes' title.
    ylabel : str, default="gold reward"
        The y-axis label.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    from matplotlib.figure import Figure

    from skebrm.metrics._plots import _finish_figure

    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    for name, c in curves.items():
        style = {"ls": "--", "color": "grey"} if name == "oracle" else {"marker": "o", "ms": 3}
        (line,) = ax.plot(c.kl, c.mean, label=name, **style)
        ax.fill_between(c.kl, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.15, lw=0)
    top = max(curves.values(), key=lambda c: len(c.n)) if curves else None
    if top is not None:
        # label n at powers of two and at the largest n: the KL axis crowds large n
        ns = np.asarray(top.n, dtype=int)
        keep = ((ns & (ns - 1)) == 0) | (ns == ns.max())
        secondary = ax.secondary_xaxis("top")
        secondary.set_xticks(np.asarray(top.kl)[keep], [str(n) for n in ns[keep]], fontsize=7)
        secondary.set_xlabel("n", fontsize=8)
    ax.set(xlabel="KL(best-of-n ‖ policy) = log n − (n − 1)/n (upper bound)", ylabel=ylabel)
    return _finish_figure(fig, ax, title=title, path=path)

"""Length debiasing of reward scores by locally weighted regression (post-hoc reward calibration).

A reward model that prefers longer (or more heavily formatted) responses for their length
alone adds a bias ``b(L)`` to the reward of a response of length ``L``. Following Huang et
al., "Post-hoc Reward Calibration: A Case Study on Length Bias" (ICLR 2025), the bias is
estimated by a LOWESS fit of the reward on the feature, ``b̂ = LOWESS(L → r)`` with
``frac=0.5``, and removed:

``r_debiased = r − α · b̂(L)``.

The fit is statsmodels' :func:`~statsmodels.nonparametric.smoothers_lowess.lowess`
(install the ``debias`` extra: ``pip install "skebrm[debias]"``).

Two modes:

* **transductive** — ``fit_transform(feature, reward)`` fits the curve on the very set
  being scored, as the paper does on RewardBench;
* **inductive** — ``fit(feature_ref, reward_ref)`` on a reference set, then
  ``transform(feature, reward)`` anywhere: the fitted curve is linearly interpolated
  between its knots (the distinct feature values of the reference set) and held
  constant beyond the first and last knot, so a response longer than every reference
  response gets the bias of the longest one.

A constant added to every reward moves the curve by the same constant, so the debiased
rewards move by ``(1 − α)`` times it and every difference between them (every ranking) is
unchanged. ``alpha=0`` returns the rewards unchanged.

The feature is named by ``feature`` (``"chars"``, ``"words"``, ``"tokens"`` or
``"markdown"``) and passed either as numbers or, except for ``"tokens"``, as the response
texts, from which :func:`response_features` computes it. Token counts need the reward
model's tokenizer: :func:`token_lengths`. Several bias features are removed one after the
other by chaining debiasers (each fitted on the rewards the previous one returns).

A fitted debiaser is saved without pickle: :meth:`LengthDebiaser.to_dict` returns plain
JSON-able data (the parameters and the curve's knots), :meth:`LengthDebiaser.from_dict`
restores it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from skebrm._compat import Interval, StrOptions, _fit_context
from skebrm._params import check_saved_header

__all__ = [
    "LengthDebiaser",
    "markdown_element_count",
    "response_features",
    "token_lengths",
]

_FORMAT = "skebrm.LengthDebiaser"
_FORMAT_VERSION = 1

# One markdown element per match: a header line, a list item, a block quote line, a table
# row, a fenced code block (its opening fence), bold or italic text, inline code, a link or
# an image.
_MARKDOWN_LINE = re.compile(
    r"^[ \t]{0,3}(?:#{1,6}[ \t]+\S"  # header
    r"|(?:[-*+]|\d{1,9}[.)])[ \t]+\S"  # list item
    r"|>"  # block quote
    r"|\|.*\|[ \t]*$)",  # table row
    re.MULTILINE,
)
_MARKDOWN_FENCE = re.compile(r"^[ \t]{0,3}(?:```|~~~)", re.MULTILINE)
_MARKDOWN_INLINE = re.compile(
    r"(\*\*|__)(?=\S)(?:.+?)(?<=\S)\1"  # bold
    r"|(?<![*\w])\*(?=[^\s*])[^*\n]+?(?<=\S)\*(?![*\w])"  # italic
    r"|`[^`\n]+`"  # inline code
    r"|!?\[[^\]\n]*\]\([^)\n]*\)"  # link or image
)


def markdown_element_count(text: str) -> int:
    """The number of markdown elements in ``text``.

    Counted: header lines, list items, block-quote lines and table rows (one per line),
    fenced code blocks (one per block), and bold, italic, inline-code, link and image
    spans. Text inside fenced code blocks is not searched for further elements.

    Parameters
    ----------
    text : str
        A response text.

    Returns
    -------
    int
        The number of markdown elements found.

    Examples
    --------
    >>> from skebrm.debias import markdown_element_count
    >>> markdown_element_count("# Title\\n\\n- **one**\\n- two `x`\\n")
    5
    """
    if not isinstance(text, str):
        raise TypeError(f"markdown_element_count: text must be a str, got {type(text).__name__}.")
    parts = _MARKDOWN_FENCE.split(text)
    # parts[1::2] are inside fences; an unclosed last fence still counts as a block
    n_blocks = len(parts) // 2 + (len(parts) % 2 == 0)
    outside = "\n".join(parts[0::2])
    return (
        n_blocks
        + len(_MARKDOWN_LINE.findall(outside))
        + sum(1 for _ in _MARKDOWN_INLINE.finditer(outside))
    )


def _check_texts(texts, caller: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{caller}: texts must be a sequence of str, got a single str.")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{caller}: every text must be a str, got {type(bad).__name__}.")
    return texts


def response_features(texts: Sequence[str], feature: str = "chars") -> np.ndarray:
    """A bias feature of each response text.

    Parameters
    ----------
    texts : sequence of str
        The response texts.
    feature : {"chars", "words", "markdown"}, default="chars"
        Length in characters, length in whitespace-separated words, or
        :func:`markdown_element_count`. Token counts need a tokenizer:
        :func:`token_lengths`.

    Returns
    -------
    ndarray of shape (n_texts,), float64
        The feature of each text.

    Examples
    --------
    >>> from skebrm.debias import response_features
    >>> response_features(["a b", "**hi**"], "chars"), response_features(["a b"], "words")
    (array([3., 6.]), array([2.]))
    """
    texts = _check_texts(texts, "response_features")
    if feature == "chars":
        values = [len(t) for t in texts]
    elif feature == "words":
        values = [len(t.split()) for t in texts]
    elif feature == "markdown":
        values = [markdown_element_count(t) for t in texts]
    else:
        hint = " Count tokens with token_lengths(texts, tokenizer)." if feature == "tokens" else ""
        raise ValueError(
            "response_features: feature must be one of 'chars', 'words', 'markdown', got "
            f"{feature!r}.{hint}"
        )
    return np.asarray(values, dtype=np.float64)


def token_lengths(texts: Sequence[str], tokenizer) -> np.ndarray:
    """The number of tokens of each response text.

    Parameters
    ----------
    texts : sequence of str
        The response texts.
    tokenizer : Hugging Face tokenizer or callable
        An object with ``encode(text, add_special_tokens=False)`` (a Hugging Face
        tokenizer: special tokens are not counted), or a callable ``text -> tokens``.

    Returns
    -------
    ndarray of shape (n_texts,), float64
        The token count of each text.

    Examples
    --------
    >>> from skebrm.debias import token_lengths
    >>> token_lengths(["a b c", "d"], str.split)
    array([3., 1.])
    """
    texts = _check_texts(texts, "token_lengths")
    if hasattr(tokenizer, "encode"):
        values = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    elif callable(tokenizer):
        values = [len(tokenizer(t)) for t in texts]
    else:
        raise TypeError(
            "token_lengths: tokenizer must have an encode method (a Hugging Face "
            f"tokenizer) or be callable, got {type(tokenizer).__name__}."
        )
    return np.asarray(values, dtype=np.float64)


def _lowess():
    try:
        from statsmodels.nonparametric.smoothers_lowess import lowess
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "LengthDebiaser needs statsmodels for its LOWESS fit. Install it with "
            '`pip install "skebrm[debias]"` (or `pip install statsmodels`).'
        ) from err
    return lowess


class LengthDebiaser(BaseEstimator):
    """Remove a reward model's length bias by subtracting a LOWESS fit of reward on length.

    ``r_debiased = r − α · b̂(L)`` with ``b̂`` the LOWESS curve of the rewards on the
    feature ``L`` (Huang et al., ICLR 2025). Fit and apply on one set with
    :meth:`fit_transform` (transductive), or fit on a reference set and
    :meth:`transform` another (inductive: the curve is interpolated between its knots and
    held constant beyond them).

    Parameters
    ----------
    frac : float, default=0.5
        Fraction of the points used for each local regression (the paper's 0.5).
    alpha : float, default=1.0
        How much of the fitted curve to subtract: 0 leaves the rewards unchanged, 1
        removes the whole estimated bias.
    feature : {"chars", "words", "tokens", "markdown"}, default="chars"
        What the feature measures. Pass the feature as numbers, or (except for
        ``"tokens"``) as the response texts, from which :func:`response_features`
        computes it. A saved debiaser records it, so whoever applies it later can compute
        the same feature.
    it : int, default=3
        Robustifying iterations of LOWESS (statsmodels' default): residual-based
        reweightings that keep outlying rewards from pulling the curve.
    delta : float, default=0.0
        statsmodels' speed-up: points closer than ``delta`` (in feature units) to the
        last fitted point are linearly interpolated instead of fitted. 0 fits every
        distinct feature value.

    Attributes
    ----------
    knots_x_ : ndarray of shape (n_knots,)
        The distinct feature values of the fitted set, increasing.
    knots_y_ : ndarray of shape (n_knots,)
        The fitted curve at ``knots_x_``.
    n_samples_fit_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from skebrm import LengthDebiaser
    >>> rng = np.random.default_rng(0)
    >>> length = rng.integers(10, 1000, size=200).astype(float)
    >>> quality = rng.normal(size=200)
    >>> reward = quality + 0.004 * length  # a reward model that likes length
    >>> debiased = LengthDebiaser().fit_transform(length, reward)
    >>> bool(abs(np.corrcoef(length, debiased)[0, 1]) < 0.1)
    True
    >>> d = LengthDebiaser().fit(length, reward)  # inductive: apply elsewhere
    >>> d.transform([5000.0], [1.0]).shape  # beyond the longest: the last knot's bias
    (1,)
    """

    _parameter_constraints: dict = {
        "frac": [Interval(Real, 0, 1, closed="right")],
        "alpha": [Interval(Real, None, None, closed="neither")],
        "feature": [StrOptions({"chars", "words", "tokens", "markdown"})],
        "it": [Interval(Integral, 0, None, closed="left")],
        "delta": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        frac: float = 0.5,
        alpha: float = 1.0,
        feature: str = "chars",
        it: int = 3,
        delta: float = 0.0,
    ):
        self.frac = frac
        self.alpha = alpha
        self.feature = feature
        self.it = it
        self.delta = delta

    # ---------------------------------------------------------------- inputs
    def _feature_values(self, X, caller: str) -> np.ndarray:
        """The feature as a float vector: numbers as given, texts measured."""
        if isinstance(X, str):
            raise TypeError(
                f"{caller}: X must be one feature value or text per response, got a single str."
            )
        arr = X if isinstance(X, np.ndarray) else np.asarray(list(X), dtype=object)
        if arr.dtype.kind == "U" or (
            arr.dtype == object and arr.size and all(isinstance(v, str) for v in arr.ravel())
        ):
            if self.feature == "tokens":
                raise ValueError(
                    f"{caller}: feature='tokens' cannot be computed from texts without the "
                    "tokenizer; pass token_lengths(texts, tokenizer) as X."
                )
            return response_features([str(v) for v in arr.ravel()], self.feature)
        try:
            values = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{caller}: X must hold numbers (the feature) or response texts, got "
                f"{arr.dtype} values that are neither."
            ) from err
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise ValueError(
                f"{caller}: X must have shape (n_samples,) or (n_samples, 1): one feature "
                f"value per response, got shape {values.shape}."
            )
        if not np.isfinite(values).all():
            raise ValueError(f"{caller}: X contains NaN or infinity; every value must be finite.")
        return values

    @staticmethod
    def _rewards(y, n: int, caller: str) -> np.ndarray:
        r = np.asarray(y, dtype=np.float64)
        if r.ndim == 2 and r.shape[1] == 1:
            r = r[:, 0]
        if r.shape != (n,):
            raise ValueError(
                f"{caller}: the rewards must have shape ({n},) to align with X, got shape "
                f"{r.shape}."
            )
        if not np.isfinite(r).all():
            raise ValueError(
                f"{caller}: the rewards contain NaN or infinity; every value must be finite."
            )
        return r

    # ------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the bias curve: LOWESS of the rewards ``y`` on the feature ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or sequence of str
            The feature of each response, or the response texts.
        y : array-like of shape (n_samples,)
            The rewards.

        Returns
        -------
        self : LengthDebiaser
            The fitted debiaser.
        """
        caller = f"{type(self).__name__}.fit"
        x = self._feature_values(X, caller)
        r = self._rewards(y, x.shape[0], caller)
        if x.shape[0] < 2:
            raise ValueError(f"{caller}: needs at least 2 responses, got {x.shape[0]}.")
        knots_x = np.unique(x)
        if knots_x.size < 2:
            # a constant feature carries no length signal: the curve is the mean reward
            knots_y = np.array([r.mean()])
        else:
            k = int(self.frac * x.shape[0] + 1e-10)  # points per local regression
            _, counts = np.unique(x, return_counts=True)
            if counts.max() >= k:
                # a neighbourhood made of one feature value has zero width: no local line
                raise ValueError(
                    f"{caller}: frac={self.frac!r} gives local regressions of {k} points, but "
                    f"{counts.max()} of the {x.shape[0]} responses share one feature value, "
                    "so a neighbourhood has zero width. Raise frac above "
                    f"{counts.max() / x.shape[0]:.3g}."
                )
            fitted = _lowess()(
                r, x, frac=self.frac, it=self.it, delta=self.delta, return_sorted=False
            )
            # every response with one feature value gets one bias (the knot's mean fit)
            inverse = np.searchsorted(knots_x, x)
            knots_y = np.bincount(inverse, weights=fitted) / np.bincount(inverse)
            if not np.isfinite(knots_y).all():
                raise ValueError(
                    f"{caller}: the LOWESS fit is not finite; frac={self.frac!r} leaves too "
                    f"few points per local regression for {x.shape[0]} responses. Raise frac."
                )
        self.knots_x_ = knots_x
        self.knots_y_ = knots_y
        self.n_samples_fit_ = int(x.shape[0])
        return self

    # ------------------------------------------------------------- inference
    def bias(self, X) -> np.ndarray:
        """The fitted curve ``b̂`` at each feature value (n_samples,), before ``alpha``.

        Linear between the knots, constant beyond the first and the last.

        Parameters
        ----------
        X : array-like of shape (n_samples,) or sequence of str
            The feature of each response, or the response texts.

        Returns
        -------
        ndarray of shape (n_samples,)
            The fitted bias of each response.
        """
        check_is_fitted(self)
        x = self._feature_values(X, f"{type(self).__name__}.bias")
        if self.knots_x_.size == 1:
            return np.full(x.shape[0], self.knots_y_[0])
        return np.interp(x, self.knots_x_, self.knots_y_)

    def transform(self, X, y) -> np.ndarray:
        """The debiased rewards ``y − alpha · b̂(X)`` (n_samples,).

        Parameters
        ----------
        X : array-like of shape (n_samples,) or sequence of str
            The feature of each response, or the response texts.
        y : array-like of shape (n_samples,)
            Their rewards.

        Returns
        -------
        ndarray of shape (n_samples,)
            The debiased reward of each response.
        """
        b = self.bias(X)
        r = self._rewards(y, b.shape[0], f"{type(self).__name__}.transform")
        if self.alpha == 0:
            return r.copy()
        return r - self.alpha * b

    def fit_transform(self, X, y) -> np.ndarray:
        """Fit on ``(X, y)`` and debias those same rewards (the transductive mode).

        Parameters
        ----------
        X : array-like of shape (n_samples,) or sequence of str
            The feature of each response, or the response texts.
        y : array-like of shape (n_samples,)
            Their rewards.

        Returns
        -------
        ndarray of shape (n_samples,)
            The debiased reward of each response.
        """
        return self.fit(X, y).transform(X, y)

    # ----------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        """The fitted debiaser as plain JSON-able data (no pickle).

        Returns
        -------
        dict
            ``format``, ``version``, ``params`` (the constructor's parameters),
            ``knots_x``, ``knots_y`` and ``n_samples_fit``; floats round-trip exactly
            through :mod:`json`.
        """
        check_is_fitted(self)
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "params": {
                "frac": float(self.frac),
                "alpha": float(self.alpha),
                "feature": str(self.feature),
                "it": int(self.it),
                "delta": float(self.delta),
            },
            "knots_x": [float(v) for v in self.knots_x_],
            "knots_y": [float(v) for v in self.knots_y_],
            "n_samples_fit": int(self.n_samples_fit_),
        }

    @classmethod
    def from_dict(cls, data: dict) -> LengthDebiaser:
        """Restore a debiaser saved by :meth:`to_dict`.

        Parameters
        ----------
        data : dict
            The output of :meth:`to_dict` (e.g. read back from JSON).

        Returns
        -------
        LengthDebiaser
            The fitted debiaser.

        Raises
        ------
        ValueError
            If ``data`` is not a saved debiaser of a version this package reads, or its
            knots are not finite, increasing and aligned.
        """
        caller = f"{cls.__name__}.from_dict"
        check_saved_header(
            data, fmt=_FORMAT, version=_FORMAT_VERSION, what="LengthDebiaser", caller=caller
        )
        try:
            params = dict(data["params"])
            kx = np.asarray(data["knots_x"], dtype=np.float64)
            ky = np.asarray(data["knots_y"], dtype=np.float64)
            n_fit = int(data["n_samples_fit"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{caller}: malformed data ({err!r}).") from err
        ok = (
            kx.ndim == 1
            and kx.shape == ky.shape
            and kx.size >= 1
            and np.isfinite(kx).all()
            and np.isfinite(ky).all()
            and np.all(np.diff(kx) > 0)
        )
        if not ok:
            raise ValueError(
                f"{caller}: the knots must be finite, aligned 1-D lists with strictly "
                "increasing knots_x."
            )
        est = cls(**params)
        est._validate_params()
        est.knots_x_, est.knots_y_, est.n_samples_fit_ = kx, ky, n_fit
        return est

"""The embedding extractor: ``(prompt, response) -> (e, r)`` for any one-label reward model."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm.auto import tqdm

from skebrm.datasets import _validate_record, pairs_to_rows
from skebrm.extraction._formatting import encode_rows, resolve_template
from skebrm.extraction._heads import find_scoring_head, pooled_index

__all__ = ["EmbeddingExtractor", "ExtractionResult", "SelfCheckError", "as_rows", "prompt_groups"]

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
# Self-check tolerance: |W·e + b − logit| <= atol + rtol·|logit|, per dtype of the model.
SELF_CHECK_TOL = {
    torch.float64: (1e-8, 1e-8),
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (5e-2, 2e-2),
    torch.float16: (1e-2, 1e-2),
}


class SelfCheckError(RuntimeError):
    """The extracted embeddings do not reproduce the model's own logits."""


@dataclass
class ExtractionResult:
    """Embeddings and rewards of response rows, with pair metadata when pairs were given.

    Parameters
    ----------
    embeddings : ndarray of shape (n, d), float32
        Input of the model's final scoring layer, pooled as the model pools.
    rewards : ndarray of shape (n,), float32
        The model's own reward (logit).
    pair_id, chosen : ndarray of shape (n,) or None
        Pair metadata (two rows per pair, chosen first) when the input was pairs.
    subset, section : object ndarray of shape (n,) or None
        The ``subset`` and ``section`` labels of each row, when the input had them.
    n_truncated : int
        Rows whose prompt was cut (from the left) to fit ``max_length``.
    n_response_truncated : int
        Rows whose response also had to be cut (``long_response="truncate"``).
    info : dict
        ``n_tokens`` (real tokens), ``n_batch_tokens`` (tokens run, padding included),
        ``max_tokens``; for a loaded cache, its directory and key.
    groups : int ndarray of shape (n,) or None
        The prompt of each row, as an integer (rows with the same prompt share one, in
        order of first appearance; :func:`prompt_groups`).
    """

    embeddings: np.ndarray
    rewards: np.ndarray
    pair_id: np.ndarray | None = None
    chosen: np.ndarray | None = None
    subset: np.ndarray | None = None
    section: np.ndarray | None = None
    n_truncated: int = 0
    n_response_truncated: int = 0
    info: dict = field(default_factory=dict)
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def fit_params(self, *, groups: bool = True) -> dict:
        """The pair metadata for ``EnergyRewardCalibrator.fit(X, y, **res.fit_params())``.

        Parameters
        ----------
        groups : bool, default=True
            Include ``groups`` (the prompt of each row), so that the calibrator's
            validation split holds out whole prompts rather than single pairs (a prompt's
            pairs share its text, so a split by pair would score pairs whose prompt was
            trained on). Pass False for estimators whose ``fit`` takes no ``groups``
            (``BradleyTerryHead``).

        Returns
        -------
        dict
            ``pair_id`` and ``chosen``, and ``groups`` when asked for and the rows are
            pairs with known prompts.
        """
        out = {"pair_id": self.pair_id, "chosen": self.chosen}
        if groups and self.groups is not None and self.pair_id is not None:
            out["groups"] = self.groups
        return out


def prompt_groups(prompts) -> np.ndarray:
    """One integer per distinct prompt, numbered in order of first appearance."""
    ids: dict[str, int] = {}
    return np.fromiter((ids.setdefault(p, len(ids)) for p in prompts), np.int64, len(prompts))


@dataclass
class Rows:
    """Response rows parsed from the extractor's input."""

    prompts: list
    responses: list
    pair_id: np.ndarray | None = None
    chosen: np.ndarray | None = None
    subset: np.ndarray | None = None
    section: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, start: int, stop: int) -> Rows:
        def cut(a):
            return None if a is None else a[start:stop]

        return Rows(
            self.prompts[start:stop],
            self.responses[start:stop],
            cut(self.pair_id),
            cut(self.chosen),
            cut(self.subset),
            cut(self.section),
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p, r in zip(self.prompts, self.responses):
            h.update(p.encode("utf-8"))
            h.update(b"\x1f")
            h.update(r.encode("utf-8"))
            h.update(b"\x1e")
        if self.pair_id is not None:
            h.update(np.ascontiguousarray(self.pair_id, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(self.chosen, dtype=bool).tobytes())
        return h.hexdigest()


def as_rows(X) -> Rows:
    """Parse pairs (dicts with prompt/chosen/rejected) or (prompt, response) tuples."""
    if isinstance(X, Rows):
        return X
    if isinstance(X, (str, bytes, dict)) or not isinstance(X, (Sequence, np.ndarray)):
        raise TypeError(
            "EmbeddingExtractor: X must be a list of preference pairs (dicts with 'prompt', "
            "'chosen', 'rejected') or of (prompt, response) tuples, got "
            f"{type(X).__name__}."
        )
    if len(X) == 0:
        raise ValueError("EmbeddingExtractor: X is empty; pass at least one row.")
    if isinstance(X[0], dict):
        pairs = [_validate_record(p, i) for i, p in enumerate(X)]
        rows = pairs_to_rows(pairs)
        return Rows(
            list(rows["prompt"]),
            list(rows["response"]),
            rows["pair_id"],
            rows["chosen"],
            rows["subset"],
            rows["section"],
        )
    prompts, responses = [], []
    for i, row in enumerate(X):
        if isinstance(row, dict) or isinstance(row, str) or len(row) != 2:
            raise ValueError(
                f"EmbeddingExtractor: X[{i}] must be a (prompt, response) pair like X[0] "
                f"({type(X[0]).__name__}), got {row!r:.80}."
            )
        prompts.append(row[0])
        responses.append(row[1])
    return Rows(prompts, responses)


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(
        f"EmbeddingExtractor: dtype must be None, a torch.dtype or one of {list(_DTYPES)}, "
        f"got {dtype!r}."
    )


# Fingerprints known without hashing: a model loaded from files whose checksums were
# verified as they were read (RefinedRewardModel.from_pretrained) has the fingerprint its
# manifest records. Each entry holds the state it is valid for (every tensor's storage,
# dtype, device and in-place version counter), so a model changed since is hashed again.
_KNOWN_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_signature(model: nn.Module) -> tuple:
    return tuple(
        (name, t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
        for name, t in model.state_dict().items()
    )


def remember_weights_fingerprint(model: nn.Module, sha256: str) -> None:
    """Record ``sha256`` as the fingerprint of ``model`` as it is now (no hashing)."""
    _KNOWN_FINGERPRINTS[model] = (sha256, _state_signature(model))


def weights_fingerprint(model: nn.Module, dtype: torch.dtype | None = None) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the model's state dict.

    With ``dtype``, of the state dict the model would have after ``model.to(dtype)``
    (floating-point tensors converted), without converting the model. A fingerprint
    recorded by :func:`remember_weights_fingerprint` for the model's current state is
    returned without hashing.
    """
    tensors = model.state_dict()
    if dtype is None or all(t.dtype == dtype for t in tensors.values() if t.is_floating_point()):
        known = _KNOWN_FINGERPRINTS.get(model)
        if known is not None and known[1] == _state_signature(model):
            return known[0]
        dtype = None
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a fast tokenizer's full definition (else of its vocabulary).

    The truncation and padding settings are left out: a call such as
    ``tokenizer(texts, truncation=True, padding=True)`` stores them on the backend, so
    they record how the tokenizer was last used, not what it is. They are cleared on a
    copy; the caller's tokenizer is not changed.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
        if backend.truncation is not None or backend.padding is not None:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(text)
            copy.no_truncation()
            copy.no_padding()
            text = copy.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha256_with_specials(text, tokenizer)


def _sha256_with_specials(text: str, tokenizer) -> str:
    special = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return hashlib.sha256((text + special).encode("utf-8")).hexdigest()


def _legacy_tokenizer_fingerprint(tokenizer) -> str:
    """The fingerprint skebrm 0.2.0 recorded: the backend's definition with its truncation
    and padding settings. Bundles saved then are checked against it on load."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _tokenizer_fingerprint(tokenizer)
    return _sha256_with_specials(backend.to_str(), tokenizer)


class EmbeddingExtractor(TransformerMixin, BaseEstimator):
    """Extract the reward model's embedding ``e`` (input of its scoring layer) and reward ``r``.

    Works for any one-label ``AutoModelForSequenceClassification`` without per-architecture
    code: the scoring ``nn.Linear`` is found generically (:func:`find_scoring_head`), its
    input is captured with a forward hook and pooled exactly as the model pools. On the
    first batch of every extraction a self-check verifies ``W·e + b`` against the model's
    own logits (tolerance ``atol + rtol·|logit|``: 1e-4 + 1e-4 for float32, 5e-2 + 2e-2
    for bfloat16, 1e-2 + 1e-2 for float16) and raises :class:`SelfCheckError` otherwise.

    Parameters
    ----------
    model : nn.Module or str or path-like
        A model instance (used as is: it is put in eval mode and moved to ``device``) or
        a local directory loaded with ``AutoModelForSequenceClassification``.
    tokenizer : PreTrainedTokenizerBase or str, optional
        Defaults to the tokenizer saved with ``model`` (required for a model instance).
    max_length : int, default=512
        Token budget of a formatted row; longer rows are cut (prompt first, from the left;
        see :mod:`skebrm.extraction._formatting`).
    batch_size : int, default=16
        Rows per forward pass. Rows are sorted by length before batching; results are
        returned in input order and do not depend on the batch size.
    template : {"auto", "chat"} or str, default="auto"
        The tokenizer's chat template if it has one, else ``"{prompt}\\n\\n{response}"``; or
        a format string with ``{prompt}`` and ``{response}``.
    head : None, str, callable or HeadAdapter
        Adapter hook for heads the generic rule cannot find.
    long_response : {"truncate", "error"}, default="truncate"
        What to do when the response alone exceeds ``max_length``: cut its end, or raise.
    padding_side : {None, "left", "right"}, default=None
        Padding of batches for models pooled at the last token; None uses the
        tokenizer's. Results are the same either way: with left padding, models that take
        ``position_ids`` get positions counted from the first real token. Models that pool
        themselves (BERT-like CLS poolers read position 0) are always padded on the right.
    sort_by_length : bool, default=True
        Form batches from length-sorted rows (less padding); False batches rows in input
        order (for benchmarks). The output is in input order either way.
    trust_remote_code : bool, default=False
        Passed to ``from_pretrained`` when ``model`` is a path; off unless you turn it on.
    device : str, default="cpu"
        The torch device the model runs on (a loaded model is moved there by ``fit``).
    dtype : None or {"float32", "bfloat16", "float16", "float64"}, default=None
        None keeps an instance's dtype and loads a path in float32. Embeddings and rewards
        are returned as float32.
    verbose : bool, default=False
        Progress bar (texts per second).

    Attributes
    ----------
    model_, tokenizer_ : the loaded model and tokenizer
    head_name_ : str
        Dotted name of the scoring layer.
    pooling_ : {"last_token", "model"}
    template_ : RowTemplate
    pad_token_id_ : int
        Id used to pad batches.
    n_features_out_ : int
        Embedding dimension.

    Examples
    --------
    >>> from skebrm.extraction import EmbeddingExtractor, load_minilm  # doctest: +SKIP
    >>> model, tok = load_minilm()  # doctest: +SKIP
    >>> ext = EmbeddingExtractor(model, tok, max_length=128).fit()  # doctest: +SKIP
    >>> res = ext.extract(pairs)  # doctest: +SKIP
    >>> calibrator = EnergyRewardCalibrator()  # doctest: +SKIP
    >>> calibrator.fit(res.embeddings, res.rewards, **res.fit_params())  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        max_length: int = 512,
        batch_size: int = 16,
        template: str | None = "auto",
        head=None,
        long_response: str = "truncate",
        padding_side: str | None = None,
        sort_by_length: bool = True,
        trust_remote_code: bool = False,
        device: str = "cpu",
        dtype=None,
        verbose: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.template = template
        self.head = head
        self.long_response = long_response
        self.padding_side = padding_side
        self.sort_by_length = sort_by_length
        self.trust_remote_code = trust_remote_code
        self.device = device
        self.dtype = dtype
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = False
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        for name in ("max_length", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"EmbeddingExtractor: {name} must be a positive int, got {value!r}."
                )
        if self.long_response not in ("truncate", "error"):
            raise ValueError(
                "EmbeddingExtractor: long_response must be 'truncate' or 'error', got "
                f"{self.long_response!r}."
            )
        if self.padding_side not in (None, "left", "right"):
            raise ValueError(
                "EmbeddingExtractor: padding_side must be None, 'left' or 'right', got "
                f"{self.padding_side!r}."
            )

    def _load(self):
        dtype = _resolve_dtype(self.dtype)
        if isinstance(self.model, (str, os.PathLike)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            from transformers.utils import logging as hf_logging

            path = os.fspath(self.model)
            bars = hf_logging.is_progress_bar_enabled()
            if not self.verbose:
                hf_logging.disable_progress_bar()
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    trust_remote_code=self.trust_remote_code,
                    dtype=dtype or torch.float32,
                )
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            tok_src = self.tokenizer if self.tokenizer is not None else path
            tokenizer = (
                AutoTokenizer.from_pretrained(
                    os.fspath(tok_src), trust_remote_code=self.trust_remote_code
                )
                if isinstance(tok_src, (str, os.PathLike))
                else tok_src
            )
            name = path
        elif isinstance(self.model, nn.Module):
            model = self.model  # converted and moved by _place, after every check
            if self.tokenizer is None:
                raise ValueError(
                    "EmbeddingExtractor: tokenizer is required when model is an nn.Module "
                    f"instance ({type(model).__name__}); pass its tokenizer."
                )
            tokenizer = self.tokenizer
            if isinstance(tokenizer, (str, os.PathLike)):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(
                    os.fspath(tokenizer), trust_remote_code=self.trust_remote_code
                )
            config = getattr(model, "config", None)
            name = getattr(config, "_name_or_path", "") or type(model).__name__
        else:
            raise TypeError(
                "EmbeddingExtractor: model must be an nn.Module or a local path, got "
                f"{type(self.model).__name__}."
            )
        return model, tokenizer, name

    def fit(self, X=None, y=None):
        """Load the model and tokenizer, find the scoring layer and pooling; ``X`` is ignored.

        Every check runs before a model instance is changed: only then is it converted
        to ``dtype`` and moved to ``device`` (in place, as ``nn.Module.to`` does) and put
        in eval mode.

        Parameters
        ----------
        X : None
            Ignored; present for scikit-learn API compatibility.
        y : None
            Ignored; present for scikit-learn API compatibility.

        Returns
        -------
        self : EmbeddingExtractor
            The fitted extractor.
        """
        return self._inspect()._place()

    def _place(self):
        """Convert the model to ``dtype``, move it to ``device``, eval mode (in place)."""
        model = self.model_
        if any(p.dtype != self.dtype_ for p in model.parameters() if p.is_floating_point()):
            model = model.to(self.dtype_)
        self.model_ = model.to(self.device).eval()
        self._input_device = torch.device(self.device)
        return self

    def _inspect(self):
        """:meth:`fit` up to, not including, changing the model (see :meth:`_place`)."""
        self._check_params()
        self.model_, self.tokenizer_, self.model_name_ = self._load()
        torch.device(self.device)  # refuse a bad device name before anything else
        first = next(self.model_.parameters(), None)
        self._input_device = torch.device("cpu") if first is None else first.device
        self.head_name_, self.head_layer_, pooling = find_scoring_head(self.model_, self.head)
        self.template_ = resolve_template(self.tokenizer_, self.template)
        config = getattr(self.model_, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.model_pad_token_id_ = getattr(text_config, "pad_token_id", None)
        pad = self.model_pad_token_id_
        if pad is None:
            pad = getattr(self.tokenizer_, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer_, "eos_token_id", None)
        self.pad_token_id_ = 0 if pad is None else int(pad)
        self.padding_side_ = self.padding_side or getattr(self.tokenizer_, "padding_side", "right")
        params = inspect.signature(self.model_.forward).parameters
        self._pass_position_ids = "position_ids" in params and not any(
            isinstance(m, nn.Embedding) and m.padding_idx is not None
            for n, m in self.model_.named_modules()
            if n.endswith("position_embeddings")
        )
        self.pooling_ = pooling
        self._fingerprint = None
        if pooling == "auto":
            # Probe the layer's input rank on one short row.
            ids = encode_rows(
                self.tokenizer_,
                ["Hi"],
                ["Hello"],
                template=self.template_,
                max_length=max(self.max_length, 64),
            ).input_ids
            _, _, rank = self._forward(ids, probe=True)
            self.pooling_ = "last_token" if rank == 3 else "model"
        self.n_features_out_ = int(self.head_layer_.in_features)
        target = _resolve_dtype(self.dtype)
        self.dtype_ = target if target is not None else next(self.model_.parameters()).dtype
        return self

    # ------------------------------------------------------------ identity
    def weights_fingerprint(self) -> str:
        """SHA-256 of the fitted model's weights (computed once, for cache keys).

        Returns
        -------
        str
            The hex digest.
        """
        check_is_fitted(self, "model_")
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model_, self.dtype_)
        return self._fingerprint

    def identity(self) -> dict:
        """Everything that determines the output, for cache manifests.

        Returns
        -------
        dict
            The model, its weights' and tokenizer's fingerprints, the scoring layer, the
            template and the settings that change the output.
        """
        from skebrm import __version__

        check_is_fitted(self, "model_")
        return {
            "model": str(self.model_name_),
            "model_class": type(self.model_).__name__,
            "weights_sha256": self.weights_fingerprint(),
            "tokenizer": type(self.tokenizer_).__name__,
            "tokenizer_sha256": _tokenizer_fingerprint(self.tokenizer_),
            "head": self.head_name_,
            "template": self.template_.name,
            "max_length": int(self.max_length),
            "long_response": self.long_response,
            "pooling": self.pooling_,
            "dtype": str(self.dtype_).replace("torch.", ""),
            "skebrm_version": __version__,
        }

    # -------------------------------------------------------------- forward
    @contextlib.contextmanager
    def _pad_id_for_batches(self):
        """A model without ``pad_token_id`` refuses batches; lend it ours for the call.

        The rows are then pooled at their last attended token, which is what the model
        computes on each row alone.
        """
        config = getattr(self.model_, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if text_config is None or self.model_pad_token_id_ is not None:
            yield
            return
        text_config.pad_token_id = self.pad_token_id_
        try:
            yield
        finally:
            text_config.pad_token_id = None

    def _batch_tensors(self, ids: list[list[int]]):
        width = max(len(x) for x in ids)
        # Models that pool themselves read position 0 (CLS): they are always right-padded.
        left = self.padding_side_ == "left" and self.pooling_ == "last_token"
        input_ids = torch.full((len(ids), width), self.pad_token_id_, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            if left:
                input_ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
            else:
                input_ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
        device = self._input_device
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if self._pass_position_ids:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        return kwargs

    def _forward(self, ids: list[list[int]], *, probe: bool = False):
        """One batch -> (e (B, d) tensor, r (B,) tensor, head-input rank)."""
        captured = {}

        def hook(module, args, output):
            captured["input"] = args[0]
            captured["output"] = output

        kwargs = self._batch_tensors(ids)
        handle = self.head_layer_.register_forward_hook(hook)
        try:
            with torch.inference_mode(), self._pad_id_for_batches():
                out = self.model_(**kwargs)
        finally:
            handle.remove()
        if "input" not in captured:
            raise RuntimeError(
                f"EmbeddingExtractor: the scoring layer {self.head_name_!r} was not called "
                f"by {type(self.model_).__name__}.forward; pass head=HeadAdapter(...) naming "
                "the layer that produces the reward."
            )
        h_in, h_out = captured["input"], captured["output"]
        rank = h_in.dim()
        if probe:
            return None, None, rank
        pooling = self.pooling_
        batch = torch.arange(len(ids), device=h_in.device)
        if pooling == "last_token":
            if rank != 3:
                raise ValueError(
                    f"EmbeddingExtractor: pooling='last_token' needs a per-token input to "
                    f"{self.head_name_!r}, got shape {tuple(h_in.shape)}."
                )
            idx = pooled_index(
                kwargs["input_ids"], kwargs["attention_mask"], self.model_pad_token_id_
            )
            e, head_r = h_in[batch, idx], h_out[batch, idx, 0]
        else:
            if rank != 2:
                raise ValueError(
                    f"EmbeddingExtractor: pooling='model' needs one input vector per row to "
                    f"{self.head_name_!r}, got shape {tuple(h_in.shape)}."
                )
            e, head_r = h_in, h_out[:, 0]
        logits = out.get("logits") if hasattr(out, "get") else getattr(out, "logits", None)
        usable = (
            isinstance(logits, torch.Tensor)
            and tuple(logits.shape) == (len(ids), 1)
            and (pooling == "model" or self.model_pad_token_id_ is not None)
        )
        r = logits[:, 0] if usable else head_r
        return e, r, rank

    def _self_check(self, ids: list[list[int]], e: torch.Tensor, r: torch.Tensor) -> None:
        atol, rtol = SELF_CHECK_TOL.get(self.dtype_, (1e-2, 1e-2))
        w = self.head_layer_.weight.detach().to(torch.float64).cpu()
        b = self.head_layer_.bias
        r_hat = e.to(torch.float64).cpu() @ w[0]
        if b is not None:
            r_hat = r_hat + float(b.detach().to(torch.float64).cpu()[0])
        ref = r.to(torch.float64).cpu()
        refs = [("the batch", ref)]
        if self.pooling_ == "last_token" and self.model_pad_token_id_ is None:
            # Batches lent the model a pad id: also compare with the model on row 0 alone.
            single = self._batch_tensors(ids[:1])
            with torch.inference_mode():
                out = self.model_(**single)
            logits = getattr(out, "logits", None)
            if isinstance(logits, torch.Tensor) and logits.shape == (1, 1):
                refs.append(("row 0 run alone", logits[:, 0].to(torch.float64).cpu()))
        for what, target in refs:
            got = r_hat[: len(target)]
            err = (got - target).abs()
            bound = atol + rtol * target.abs()
            if not bool(torch.all(err <= bound)):
                worst = int(torch.argmax(err - bound))
                raise SelfCheckError(
                    f"EmbeddingExtractor: self-check failed on {what}: W·e + b of layer "
                    f"{self.head_name_!r} gives {float(got[worst]):.6g} but the model's logit "
                    f"is {float(target[worst]):.6g} (|diff| {float(err[worst]):.3g} > "
                    f"{float(bound[worst]):.3g}). The layer or the pooling is not what the "
                    "model uses: pass head=HeadAdapter(...)."
                )

    # ------------------------------------------------------------ transform
    def extract(self, X) -> ExtractionResult:
        """Embeddings, rewards and pair metadata of ``X`` (pairs give two rows each).

        Parameters
        ----------
        X : list of dict or list of tuple of (str, str)
            Preference pairs (dicts with ``prompt``, ``chosen`` and ``rejected``) or
            ``(prompt, response)`` rows.

        Returns
        -------
        ExtractionResult
            The embeddings, rewards and metadata of every row, pairs as chosen then
            rejected.
        """
        if not hasattr(self, "model_"):
            self.fit()
        rows = as_rows(X)
        enc = encode_rows(
            self.tokenizer_,
            rows.prompts,
            rows.responses,
            template=self.template_,
            max_length=int(self.max_length),
            long_response=self.long_response,
        )
        n = len(rows)
        lengths = np.fromiter((len(x) for x in enc.input_ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable") if self.sort_by_length else np.arange(n)
        emb = np.empty((n, self.n_features_out_), dtype=np.float32)
        rew = np.empty(n, dtype=np.float32)
        bs = int(self.batch_size)
        batch_tokens = 0
        with tqdm(
            total=n, unit="text", desc="extract", disable=not self.verbose, leave=False
        ) as bar:
            for start in range(0, n, bs):
                sel = order[start : start + bs]
                ids = [enc.input_ids[i] for i in sel]
                batch_tokens += len(ids) * max(len(x) for x in ids)
                e, r, _ = self._forward(ids)
                if start == 0:
                    self._self_check(ids, e, r)
                emb[sel] = e.to(torch.float32).cpu().numpy()
                rew[sel] = r.to(torch.float32).cpu().numpy()
                bar.update(len(sel))
        return ExtractionResult(
            embeddings=emb,
            rewards=rew,
            pair_id=rows.pair_id,
            chosen=rows.chosen,
            subset=rows.subset,
            section=rows.section,
            groups=prompt_groups(rows.prompts),
            n_truncated=int(enc.prompt_cut.sum()),
            n_response_truncated=int(enc.response_cut.sum()),
            info={
                "n_tokens": int(lengths.sum()),
                "n_batch_tokens": int(batch_tokens),
                "max_tokens": int(lengths.max()),
            },
        )

    def transform(self, X) -> np.ndarray:
        """Embeddings ``(n_rows, d)`` of ``X``.

        Parameters
        ----------
        X : list of dict or list of tuple of (str, str)
            Preference pairs (dicts with ``prompt``, ``chosen`` and ``rejected``) or
            ``(prompt, response)`` rows.

        Returns
        -------
        ndarray of shape (n_rows, d)
            The embeddings of :meth:`extract`.
        """
        return self.extract(X).embeddings

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "n_features_out_")
        return np.asarray([f"e{i}" for i in range(self.n_features_out_)], dtype=object)

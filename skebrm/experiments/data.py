"""Embedded preference pairs: the extraction step (cached), prompt splits and label noise.

:class:`EmbeddedPairs` keeps two rows per pair, **chosen first** (row ``2i`` is the
chosen response of pair ``i``, row ``2i + 1`` the rejected one), which is the layout of
:func:`skebrm.datasets.pairs_to_rows` and of the extractor's output.
:func:`embed_pairs` is the only function of the experiments that touches the extractor.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from skebrm.datasets import dataset_fingerprint, split_by_prompt

__all__ = [
    "EmbeddedPairs",
    "annotator_disagreement",
    "embed_pairs",
    "extract_cached",
    "flip_labels",
    "flipped_pairs",
    "label_noise_seed",
    "load_pairs_coercing_texts",
    "response_keys",
    "response_lengths",
    "split_pair_indices",
    "split_pairs",
]


@dataclass
class EmbeddedPairs:
    """Embeddings (and optionally the backbone's own rewards) of preference pairs.

    Attributes
    ----------
    embeddings : ndarray of shape (2 * n_pairs, d)
        Rows ``2i`` (chosen) and ``2i + 1`` (rejected) of pair ``i``.
    rewards : ndarray of shape (2 * n_pairs,) or None
        The backbone's own reward per row, where it has a trained scoring head.
    prompt, subset, section : object ndarray of shape (n_pairs,)
    response_key : int64 ndarray of shape (2 * n_pairs,) or None
        A 64-bit hash of each row's prompt and response text: rows with one key are the
        same response to the same prompt. It groups the pairs that share a prompt and a
        chosen response (:attr:`chosen_group`, for best-of-k accuracy). Not part of any
        cache key.
    disagreement : float ndarray of shape (n_pairs,) or None
        1.0 where the pair's annotators did not vote unanimously (``meta.votes``), 0.0
        where they did, NaN where the pair has no votes; None when no pair has votes.
    length : float ndarray of shape (2 * n_pairs,) or None
        Each row's response length in characters (the length-debiasing feature). Not part
        of any cache key.
    markdown : float ndarray of shape (2 * n_pairs,) or None
        Each row's markdown-element count
        (:func:`skebrm.debias.markdown_element_count`). Not part of any cache key.
    """

    embeddings: np.ndarray
    rewards: np.ndarray | None
    prompt: np.ndarray
    subset: np.ndarray
    section: np.ndarray
    response_key: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    length: np.ndarray | None = None
    markdown: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.prompt)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != 2 * n:
            raise ValueError(
                f"EmbeddedPairs: embeddings must have shape ({2 * n}, d) for {n} pairs, got "
                f"{self.embeddings.shape}."
            )
        for name in ("subset", "section"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"EmbeddedPairs: {name} must have {n} entries (one per pair), got "
                    f"{len(getattr(self, name))}."
                )
        for name in self._ROW_FIELDS:
            shape = (2 * n,)
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"EmbeddedPairs: {name} must have shape {shape}, got {value.shape}."
                )
        if self.disagreement is not None and self.disagreement.shape != (n,):
            raise ValueError(
                f"EmbeddedPairs: disagreement must have shape ({n},) (one value per pair), "
                f"got {self.disagreement.shape}."
            )

    _ROW_FIELDS = ("rewards", "response_key", "length", "markdown")

    def feature(self, name: str) -> np.ndarray | None:
        """A response feature per row: ``"chars"`` (:attr:`length`) or ``"markdown"``."""
        if name not in ("chars", "markdown"):
            raise ValueError(
                f"EmbeddedPairs.feature: name must be 'chars' or 'markdown', got {name!r}."
            )
        return self.length if name == "chars" else self.markdown

    @property
    def n_pairs(self) -> int:
        return len(self.prompt)

    @property
    def pair_id(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_pairs), 2)

    @property
    def chosen(self) -> np.ndarray:
        return np.tile(np.array([True, False]), self.n_pairs)

    @property
    def chosen_group(self) -> np.ndarray | None:
        """Group index per pair: pairs that share the prompt and the chosen response.

        A group of ``k − 1`` pairs is one chosen response against ``k − 1`` rejected ones
        (RewardBench 2's best-of-k format). None without :attr:`response_key`.
        """
        if self.response_key is None:
            return None
        keys = list(zip(self.prompt.tolist(), self.response_key[0::2].tolist()))
        index: dict = {}
        return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)

    def take(self, pairs: np.ndarray) -> EmbeddedPairs:
        """The pairs at positions ``pairs`` (in that order)."""
        pairs = np.asarray(pairs, dtype=np.int64)
        rows = np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()
        return EmbeddedPairs(
            embeddings=self.embeddings[rows],
            rewards=None if self.rewards is None else self.rewards[rows],
            prompt=self.prompt[pairs],
            subset=self.subset[pairs],
            section=self.section[pairs],
            response_key=None if self.response_key is None else self.response_key[rows],
            disagreement=None if self.disagreement is None else self.disagreement[pairs],
            length=None if self.length is None else self.length[rows],
            markdown=None if self.markdown is None else self.markdown[rows],
        )

    @classmethod
    def concat(cls, parts: Sequence[EmbeddedPairs]) -> EmbeddedPairs:
        """One set of pairs from several, in order.

        ``rewards``, ``response_key``, ``length`` and ``markdown`` survive only where
        every part has them;
        ``disagreement`` survives where any part has it (NaN for the pairs of the others).
        """

        def rows(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        votes = [p.disagreement for p in parts]
        disagreement = None
        if any(v is not None for v in votes):
            disagreement = np.concatenate(
                [np.full(p.n_pairs, np.nan) if v is None else v for p, v in zip(parts, votes)]
            )
        return cls(
            embeddings=np.concatenate([p.embeddings for p in parts]),
            rewards=rows("rewards"),
            prompt=np.concatenate([p.prompt for p in parts]),
            subset=np.concatenate([p.subset for p in parts]),
            section=np.concatenate([p.section for p in parts]),
            response_key=rows("response_key"),
            disagreement=disagreement,
            length=rows("length"),
            markdown=rows("markdown"),
        )


def split_pairs(
    data: EmbeddedPairs, fractions: Sequence[float], *, random_state: int | None = 0
) -> list[EmbeddedPairs]:
    """Split by prompt with :func:`skebrm.datasets.split_by_prompt` (no prompt in two parts)."""
    return [
        data.take(part) for part in split_pair_indices(data, fractions, random_state=random_state)
    ]


def split_pair_indices(
    data: EmbeddedPairs, fractions: Sequence[float], *, random_state: int | None = 0
) -> list[np.ndarray]:
    """The pair positions of each part of :func:`split_pairs` (same split, same order)."""
    records = [{"prompt": str(p), "index": i} for i, p in enumerate(data.prompt)]
    parts = split_by_prompt(records, fractions, random_state=random_state)
    return [np.array([r["index"] for r in part], dtype=np.int64) for part in parts]


_LABEL_NOISE_SEED_OFFSET = {"head": 0, "calibrator": 1}


def label_noise_seed(split: str, seed: int) -> int:
    """The seed label noise flips a training split with: the study's ``seed`` for the head
    split, ``seed + 1`` for the calibrator split (the fine-tuning script flips the same
    pairs with it)."""
    if split not in _LABEL_NOISE_SEED_OFFSET:
        raise ValueError(
            f"label_noise_seed: split must be one of {sorted(_LABEL_NOISE_SEED_OFFSET)}, "
            f"got {split!r}."
        )
    return seed + _LABEL_NOISE_SEED_OFFSET[split]


def flipped_pairs(n_pairs: int, fraction: float, *, random_state=None) -> np.ndarray:
    """The ``round(fraction * n_pairs)`` pair indices that label noise flips."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"flipped_pairs: fraction must be in [0, 1], got {fraction!r}.")
    rng = np.random.default_rng(random_state)
    return rng.choice(n_pairs, size=round(fraction * n_pairs), replace=False)


def flip_labels(data: EmbeddedPairs, fraction: float, *, random_state=None) -> EmbeddedPairs:
    """Swap chosen and rejected in the pairs :func:`flipped_pairs` draws (label noise)."""
    flip = flipped_pairs(data.n_pairs, fraction, random_state=random_state)
    rows = np.arange(2 * data.n_pairs)
    rows[2 * flip], rows[2 * flip + 1] = 2 * flip + 1, 2 * flip
    swapped = {
        name: getattr(data, name)[rows]
        for name in EmbeddedPairs._ROW_FIELDS
        if getattr(data, name) is not None
    }
    return replace(data, embeddings=data.embeddings[rows], **swapped)


def load_pairs_coercing_texts(
    path: str | os.PathLike, *, n: int | None = None, random_state: int | None = None
) -> list[dict]:
    """:func:`skebrm.datasets.load_pairs`, after turning scalar texts back into strings.

    Some normalised files hold a response such as ``"True"`` as the JSON value ``true``
    (``pandalm_testset_v1_majority.jsonl.gz`` has six). This loader writes ``str(value)``
    for booleans and numbers in ``prompt`` / ``chosen`` / ``rejected`` and then loads the
    corrected lines with ``load_pairs`` (same validation and subsetting).
    """
    import gzip
    import tempfile

    from skebrm.datasets import load_pairs

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_pairs_coercing_texts: no file at path={str(path)!r}.")
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            for field in ("prompt", "chosen", "rejected"):
                value = record.get(field)
                if isinstance(value, (bool, int, float)):
                    record[field] = str(value)
            lines.append(json.dumps(record))
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "pairs.jsonl"
        fixed.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return load_pairs(fixed, n=n, random_state=random_state)


def _labels(values) -> np.ndarray:
    return np.array([None if v in (None, "", "None") else str(v) for v in values], dtype=object)


def response_keys(pairs: Sequence[dict]) -> np.ndarray:
    """A 64-bit key per row (chosen, then rejected, per pair) of its prompt and response.

    BLAKE2b (8 bytes) of the prompt and the response text, so that rows with one key are
    the same response to the same prompt (collisions are negligible at 2⁶⁴).
    """
    out = np.empty(2 * len(pairs), dtype=np.int64)
    for i, p in enumerate(pairs):
        for j, field in enumerate(("chosen", "rejected")):
            h = hashlib.blake2b(digest_size=8)
            h.update(str(p["prompt"]).encode())
            h.update(b"\x00")
            h.update(str(p[field]).encode())
            out[2 * i + j] = int.from_bytes(h.digest(), "little", signed=True)
    return out


def annotator_disagreement(pairs: Sequence[dict]) -> np.ndarray | None:
    """1.0 where ``meta.votes`` is not unanimous, 0.0 where it is, NaN without votes.

    ``meta.votes`` holds one vote per annotator (PandaLM: three votes of 0 = tie, 1, 2);
    a pair needs at least two votes to count. None when no pair has votes.
    """
    out = np.full(len(pairs), np.nan)
    for i, p in enumerate(pairs):
        meta = p.get("meta")
        votes = meta.get("votes") if isinstance(meta, dict) else None
        if isinstance(votes, (list, tuple)) and len(votes) >= 2:
            out[i] = float(len({json.dumps(v) for v in votes}) > 1)
    return None if np.isnan(out).all() else out


def response_lengths(pairs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's length in characters and markdown-element count (chosen, then rejected).

    Returns
    -------
    length, markdown : float64 ndarray of shape (2 * n_pairs,)
    """
    from skebrm.debias import response_features

    texts = [str(p[field]) for p in pairs for field in ("chosen", "rejected")]
    return response_features(texts, "chars"), response_features(texts, "markdown")


def code_fingerprint(source: str) -> str:
    """SHA-256 of Python ``source``'s syntax tree without its docstrings.

    Comments, docstrings, blank lines and line positions do not enter it, so a change to
    the documentation of the code leaves it unchanged; any change to what the code does
    changes it.

    Parameters
    ----------
    source : str
        The text of a Python module.

    Returns
    -------
    str
        The hexadecimal digest.
    """
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            # docstrings, attribute docstrings and any other bare string statement (none
            # of them does anything)
            node.body = [
                b
                for b in node.body
                if not (
                    isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)
                )
            ] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def _extraction_source_sha() -> str:
    """SHA-256 of the extraction code (:func:`code_fingerprint` of each module), so that a
    change to the code invalidates cached embeddings and a change to its docstrings does
    not."""
    import skebrm.extraction as extraction

    h = hashlib.sha256()
    for path in sorted(Path(extraction.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(code_fingerprint(path.read_text(encoding="utf-8")).encode())
    return h.hexdigest()


def cache_key(pairs: Sequence[dict], identity: dict) -> str:
    """SHA-256 of the pairs' texts, the backbone's identity and the extraction code.

    The key names the cache folder, so that a warm cache is found without building the
    model. It does not cover the model's weights on disk: a config whose ``model`` node
    loads different weights under the same arguments (a moved hub branch) needs another
    ``cache_dir``, or ``revision`` pinned in the config.
    """
    from skebrm import __version__

    h = hashlib.sha256()
    h.update(dataset_fingerprint(pairs).encode())
    h.update(json.dumps(identity, sort_keys=True, default=str).encode())
    h.update(__version__.encode())
    h.update(_extraction_source_sha().encode())
    return h.hexdigest()


def extract_cached(
    rows,
    load_model: Callable[[], tuple],
    folder: str | os.PathLike | None,
    *,
    max_length: int,
    batch_size: int,
    device: str = "cpu",
    verbose: bool = False,
):
    """Extract ``rows`` (pair records or (prompt, response) tuples) through the cache in
    ``folder``: a complete cache is loaded without building the model; otherwise the
    model is built with ``load_model()`` and :func:`skebrm.extraction.extract_to_cache`
    fills or resumes the folder (checking the weights and texts against its own key).
    ``folder=None`` extracts without a cache.

    Returns
    -------
    skebrm.extraction.ExtractionResult
    """
    from skebrm.extraction import (
        CacheIncompleteError,
        EmbeddingExtractor,
        extract_to_cache,
        load_cache,
    )

    def extractor():
        model, tokenizer = load_model()
        return EmbeddingExtractor(
            model,
            tokenizer,
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            verbose=verbose,
        )

    if folder is None:
        return extractor().extract(rows)
    try:
        return load_cache(folder)
    except (FileNotFoundError, CacheIncompleteError):
        extract_to_cache(extractor(), rows, folder, overwrite=True, verbose=verbose)
        return load_cache(folder)


def embed_pairs(
    pairs: Sequence[dict],
    load_model: Callable[[], tuple],
    *,
    identity: dict,
    cache_dir: str | os.PathLike | None,
    max_length: int = 512,
    batch_size: int = 16,
    device: str = "cpu",
    verbose: bool = False,
) -> EmbeddedPairs:
    """Embed preference pairs with a backbone, through the embedding cache.

    The cache folder ``cache_dir/<name>-<key>`` is named by :func:`cache_key` of the
    pairs and ``identity`` (the backbone's resolved config plus the extraction settings),
    so a complete cache is loaded with :func:`skebrm.extraction.load_cache` without
    building the model; otherwise the model is built and
    :func:`skebrm.extraction.extract_to_cache` fills (or resumes) the cache, which also
    checks the model's weights and the texts against the cache's own key.

    Parameters
    ----------
    pairs : sequence of dict
        Records in the shared schema.
    load_model : callable
        Returns ``(model, tokenizer)``; called only on a cache miss.
    identity : dict
        JSON-serialisable description of the backbone (its ``name`` names the folder).
    cache_dir : path-like or None
        None disables the cache.
    max_length, batch_size, device, verbose
        Passed to :class:`skebrm.extraction.EmbeddingExtractor`.

    Returns
    -------
    EmbeddedPairs
    """
    pairs = list(pairs)
    identity = {**identity, "max_length": int(max_length)}
    folder = None
    if cache_dir is not None:
        name = str(identity.get("name", "backbone"))
        folder = Path(cache_dir) / f"{name}-{cache_key(pairs, identity)[:24]}"
    result = extract_cached(
        pairs,
        load_model,
        folder,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
        verbose=verbose,
    )
    length, markdown = response_lengths(pairs)
    return EmbeddedPairs(
        embeddings=np.array(result.embeddings, dtype=np.float32),
        rewards=np.array(result.rewards, dtype=np.float32),
        prompt=np.array([p["prompt"] for p in pairs], dtype=object),
        subset=_labels(p.get("subset") for p in pairs),
        section=_labels(p.get("section") for p in pairs),
        # from the records, after the cache: neither enters cache_key nor the extraction
        response_key=response_keys(pairs),
        disagreement=annotator_disagreement(pairs),
        length=length,
        markdown=markdown,
    )

"""Preference-pair datasets in the shared schema.

Every record is a dict with the fields ``id``, ``subset``, ``section``, ``prompt``,
``chosen``, ``rejected`` (plus optional ``source``, ``label_type``, ``meta``).

The package bundles one permissively licensed sample, the Anthropic HH-RLHF
harmless-base test split (MIT), as :func:`load_hh_rlhf_harmless`. Other files in the
same schema (for example the studies' sets, see the user guide) load with :func:`load_pairs`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "REQUIRED_FIELDS",
    "dataset_fingerprint",
    "load_hh_rlhf_harmless",
    "load_pairs",
    "pairs_to_rows",
    "split_by_prompt",
]

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
"""The fields every record of the shared schema must have."""
_BUNDLED = "hh_rlhf_harmless_base_test.jsonl.gz"


def _validate_record(record: object, index: int) -> dict:
    if not isinstance(record, dict):
        raise TypeError(
            f"pairs[{index}] must be a dict with fields {REQUIRED_FIELDS}, got "
            f"{type(record).__name__}."
        )
    missing = [f for f in REQUIRED_FIELDS if f not in record]
    if missing:
        raise ValueError(f"pairs[{index}] is missing the field(s) {missing}; got {sorted(record)}.")
    for field in REQUIRED_FIELDS:
        value = record[field]
        if not isinstance(value, str):
            raise TypeError(
                f"pairs[{index}][{field!r}] must be a str, got "
                f"{type(value).__name__}: {value!r:.60}."
            )
    out = dict(record)
    out.setdefault("id", str(index))
    out.setdefault("subset", None)
    out.setdefault("section", None)
    if out["section"] in ("None", ""):
        out["section"] = None
    return out


def load_pairs(
    path: str | os.PathLike,
    *,
    n: int | None = None,
    random_state: int | None = None,
) -> list[dict]:
    """Load preference pairs from a (gzipped) JSON-lines file in the shared schema.

    Parameters
    ----------
    path : str or path-like
        A ``.jsonl`` or ``.jsonl.gz`` file.
    n : int, optional
        Keep a random subset of ``n`` pairs (drawn with ``random_state``), in file order.
    random_state : int, optional
        Seed for the subset.

    Returns
    -------
    list of dict
        Validated records; ``section`` is ``None`` where the file has none.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_pairs: no file at path={str(path)!r}.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    records = [_validate_record(r, i) for i, r in enumerate(records)]
    if n is not None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"load_pairs: n must be a positive int, got {n!r}.")
        if n < len(records):
            rng = np.random.default_rng(random_state)
            keep = np.sort(rng.choice(len(records), size=int(n), replace=False))
            records = [records[i] for i in keep]
    return records


def load_hh_rlhf_harmless(*, n: int | None = None, random_state: int | None = 0) -> list[dict]:
    """The bundled Anthropic HH-RLHF harmless-base test split (2,312 pairs, MIT license).

    Parameters
    ----------
    n : int, optional
        Keep a random subset of ``n`` pairs (drawn with ``random_state``), in file order;
        by default all of them.
    random_state : int, optional, default=0
        Seed for the subset.

    Returns
    -------
    list of dict
        The pairs in the shared schema (``prompt``, ``chosen``, ``rejected``, ...).
    """
    ref = resources.files(__name__).joinpath("data", _BUNDLED)
    with resources.as_file(ref) as path:
        return load_pairs(path, n=n, random_state=random_state)


def split_by_prompt(
    pairs: Sequence[dict],
    fractions: Sequence[float],
    *,
    random_state: int | None = 0,
) -> list[list[dict]]:
    """Split pairs into parts by prompt, so that no prompt appears in two parts.

    Parameters
    ----------
    pairs : sequence of dict
        Records in the shared schema.
    fractions : sequence of float
        Target share of *prompts* per part; must be positive and sum to 1.
    random_state : int, optional
        Seed of the prompt permutation.

    Returns
    -------
    list of list of dict
        One list per fraction, each in the input order.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.ndim != 1 or len(fractions) < 1 or np.any(fractions <= 0):
        raise ValueError(f"split_by_prompt: fractions must be positive, got {fractions.tolist()}.")
    if not np.isclose(fractions.sum(), 1.0):
        raise ValueError(
            f"split_by_prompt: fractions must sum to 1, got {fractions.tolist()} "
            f"(sum {fractions.sum():.4g})."
        )
    prompts = sorted({p["prompt"] for p in pairs})
    rng = np.random.default_rng(random_state)
    order = rng.permutation(len(prompts))
    bounds = np.round(np.cumsum(fractions) * len(prompts)).astype(int)
    part_of = {}
    start = 0
    for part, stop in enumerate(bounds):
        for i in order[start:stop]:
            part_of[prompts[i]] = part
        start = stop
    parts: list[list[dict]] = [[] for _ in fractions]
    for p in pairs:
        parts[part_of[p["prompt"]]].append(p)
    return parts


def pairs_to_rows(pairs: Sequence[dict]) -> dict[str, np.ndarray]:
    """Flatten pairs into response rows: two rows per pair, chosen first.

    Returns a dict of aligned arrays: ``prompt``, ``response`` (object arrays of str),
    ``pair_id`` (int index of the pair), ``chosen`` (bool), ``subset`` and ``section``
    (object arrays). This is the row layout that :class:`skebrm.EnergyRewardCalibrator`
    expects for ``pair_id`` / ``chosen``.

    Parameters
    ----------
    pairs : sequence of dict
        Records in the shared schema.

    Returns
    -------
    dict of str to ndarray
        ``prompt``, ``response``, ``pair_id``, ``chosen``, ``subset`` and ``section``,
        each of shape ``(2 * len(pairs),)``.
    """
    n = len(pairs)
    rows = {
        "prompt": np.empty(2 * n, dtype=object),
        "response": np.empty(2 * n, dtype=object),
        "pair_id": np.repeat(np.arange(n), 2),
        "chosen": np.tile(np.array([True, False]), n),
        "subset": np.empty(2 * n, dtype=object),
        "section": np.empty(2 * n, dtype=object),
    }
    for i, p in enumerate(pairs):
        for j, key in enumerate(("chosen", "rejected")):
            rows["prompt"][2 * i + j] = p["prompt"]
            rows["response"][2 * i + j] = p[key]
            rows["subset"][2 * i + j] = p.get("subset")
            rows["section"][2 * i + j] = p.get("section")
    return rows


def dataset_fingerprint(pairs: Iterable[dict]) -> str:
    """A SHA-256 over the texts and ids of the pairs, in order (for cache keys).

    Parameters
    ----------
    pairs : iterable of dict
        Records in the shared schema.

    Returns
    -------
    str
        The hex digest.
    """
    h = hashlib.sha256()
    for p in pairs:
        for key in ("id", "prompt", "chosen", "rejected"):
            h.update(str(p.get(key)).encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()

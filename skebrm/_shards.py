"""Resumable, checksummed shards: the one framework behind both on-disk caches.

A cache folder holds ``manifest.json`` (a :mod:`skebrm._manifest` manifest: the identity
``key``, its ``key_sha256``, the ``layout`` and the checksums of the cache's side files)
and ``shards/``: shard ``k`` is a data file ``shards/<k:05d><suffix>`` and its record
``shards/<k:05d>.json``, a manifest naming the data file's SHA-256. The embedding cache
(:mod:`skebrm.extraction.cache`) and the sample cache (:mod:`skebrm.sampling.cache`)
differ only in what a shard holds.

A shard is complete when its record exists: the data file is written to a temporary name
and renamed, then the record (likewise atomic). A process killed at any moment leaves
complete shards and at worst a temporary file that the next run removes, so rerunning
finishes the work without redoing or duplicating anything. Every file is read once and
checked as it is read (:func:`~skebrm._manifest.read_payload`); a file that does not
match raises :class:`CacheCorruptError`, a cache written for another key
:class:`CacheMismatchError`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skebrm._io import sha256_bytes, write_bytes_atomic
from skebrm._manifest import read_manifest, read_payload, write_manifest
from skebrm.exceptions import ModelIntegrityError

__all__ = [
    "CacheCorruptError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "ShardReport",
    "ShardStore",
    "check_shard_args",
    "key_sha256",
]

MANIFEST = "manifest.json"
_RECORD_FORMAT = "skebrm.CacheShard"
_FORMAT_VERSION = 2


class CacheMismatchError(ValueError):
    """The cache was written for another model, dataset or setting."""


class CacheCorruptError(ModelIntegrityError, OSError):
    """A cache file does not match its recorded checksum or layout."""


class CacheIncompleteError(RuntimeError):
    """Some shards of the cache have not been computed yet."""


@dataclass(kw_only=True)
class ShardReport:
    """What one call that fills a cache did: which shards it computed and skipped."""

    cache_dir: Path
    n_shards: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def _rate(self, count: int) -> float:
        return count / self.seconds if self.seconds > 0 else float("nan")


def _legacy_json(path: Path) -> dict | None:
    """The JSON object at ``path`` if it is of the first cache format (no ``format``)."""
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(64 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) and "format" not in doc else None


def key_sha256(key: dict) -> str:
    """SHA-256 of a cache key (its JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _diff(old: dict, new: dict) -> list[str]:
    if not isinstance(old, dict):
        return ["<unreadable>"]
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_shard_args(caller: str, shard_index, num_shards, shard_size) -> tuple[int, int, int]:
    """Validate ``shard_index`` in ``[0, num_shards)`` and positive sizes; return them."""
    for name, value in (("num_shards", num_shards), ("shard_size", shard_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}.")
    if (
        not isinstance(shard_index, (int, np.integer))
        or isinstance(shard_index, bool)
        or not 0 <= shard_index < num_shards
    ):
        raise ValueError(
            f"{caller}: shard_index must be an int in [0, num_shards={num_shards}), got "
            f"{shard_index!r}."
        )
    return int(shard_index), int(num_shards), int(shard_size)


@dataclass
class ShardStore:
    """One cache folder: its manifest, its shards, their checks.

    Parameters
    ----------
    cache_dir : Path
    format : str
        The manifest's ``format`` (e.g. ``"skebrm.EmbeddingCache"``).
    suffix : str
        The data files' suffix (``".safetensors"``, ``".jsonl"``).
    what : str
        How messages name the cache ("cache", "sample cache").
    writer : str
        The function that computes missing shards (named in messages).
    """

    cache_dir: Path
    format: str
    suffix: str
    what: str
    writer: str

    def __post_init__(self):
        self.cache_dir = Path(self.cache_dir)

    # ------------------------------------------------------------------ paths
    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / MANIFEST

    def data_path(self, k: int) -> Path:
        return self.cache_dir / "shards" / f"{k:05d}{self.suffix}"

    def record_path(self, k: int) -> Path:
        return self.cache_dir / "shards" / f"{k:05d}.json"

    # --------------------------------------------------------------- manifest
    def read_manifest(self, caller: str, missing: str | None = None) -> dict:
        """The verified manifest (its seal and its ``key_sha256`` recomputed).

        A cache written before the shared manifest format (no ``format``: its manifest
        and shard records carried only ``key_sha256`` and the shards' SHA-256) still
        loads, with the checks it had; shards added to it are written in the new form.
        """
        legacy = _legacy_json(self.manifest_path)
        if legacy is not None and "key" in legacy:
            doc = {**legacy, "format_version": 1, "files": {}}
        else:
            doc = read_manifest(
                self.manifest_path,
                format=self.format,
                versions=(_FORMAT_VERSION,),
                where=caller,
                missing=missing
                or f"{caller}: no {self.what} manifest at {str(self.manifest_path)!r}.",
                error=CacheCorruptError,
                hint=f" Delete the folder and rerun {self.writer}.",
            )
        if not all(isinstance(doc.get(k), dict) for k in ("key", "layout")):
            raise CacheCorruptError(
                f"{caller}: {str(self.manifest_path)!r} lacks its key or layout."
            )
        if doc.get("key_sha256") != key_sha256(doc["key"]):
            raise CacheCorruptError(
                f"{caller}: the key in {str(self.manifest_path)!r} does not match its "
                f"key_sha256: it was edited. Delete the folder and rerun {self.writer}."
            )
        return doc

    def open(self, key: dict, layout: dict, side_files: dict, *, overwrite: bool, caller: str):
        """Create the cache, or check that the one here has this key and layout.

        ``side_files`` maps a file name to its bytes (written once, with the manifest).
        A cache with another key or layout raises :class:`CacheMismatchError`, or is
        deleted with ``overwrite=True`` (only the cache's own files). Returns the
        manifest.
        """
        manifest = {
            "format": self.format,
            "format_version": _FORMAT_VERSION,
            "key": key,
            "key_sha256": key_sha256(key),
            "layout": layout,
        }
        if self.manifest_path.exists():
            try:
                old = self.read_manifest(caller)
            except CacheCorruptError:
                old = None
            if old is None or old["key"] != key or old["layout"] != layout:
                if not overwrite:
                    diff = (
                        ["format"]
                        if old is None
                        else _diff(old["key"], key) + _diff(old["layout"], layout)
                    )
                    raise CacheMismatchError(
                        f"{caller}: {str(self.cache_dir)!r} holds a {self.what} for another "
                        f"setting (differs in {diff}); use another cache_dir or pass "
                        "overwrite=True to replace it."
                    )
                self.delete(side_files)
            else:
                return old
        (self.cache_dir / "shards").mkdir(parents=True, exist_ok=True)
        files = {}
        for name, blob in side_files.items():
            write_bytes_atomic(self.cache_dir / name, blob)
            files[name] = sha256_bytes(blob)
        return write_manifest(self.manifest_path, {**manifest, "files": files})

    def delete(self, side_files=()) -> None:
        """Remove the cache's own files (shards, side files, manifest)."""
        shutil.rmtree(self.cache_dir / "shards", ignore_errors=True)
        for name in (*side_files, "merged.safetensors", "merged.json"):
            (self.cache_dir / name).unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)

    def read_side_file(self, manifest: dict, name: str, caller: str) -> bytearray:
        """A side file's bytes, checked against the manifest as they are read."""
        digest = manifest.get("files", {}).get(name)
        if digest is None and manifest.get("format_version") == 1:
            return np.frombuffer((self.cache_dir / name).read_bytes(), dtype=np.uint8)
        if digest is None:
            raise CacheCorruptError(
                f"{caller}: {str(self.manifest_path)!r} does not name {name!r}."
            )
        return read_payload(
            self.cache_dir / name,
            digest,
            where=caller,
            error=CacheCorruptError,
            hint=f" Delete the folder and rerun {self.writer}.",
        )

    # ----------------------------------------------------------------- shards
    def plan(self, shards, key_sha: str) -> tuple[list[int], list[int]]:
        """``(todo, done)`` among ``shards``; removes temporary files of killed runs."""
        todo, done = [], []
        for k in shards:
            for stale in (self.cache_dir / "shards").glob(f".{k:05d}.*"):
                stale.unlink(missing_ok=True)  # left by a killed run of this shard
            (todo if self.record(k, key_sha, verify=True) is None else done).append(k)
        return todo, done

    def write(self, k: int, key_sha: str, blob: bytes, fields: dict) -> dict:
        """Write shard ``k``: its data (atomically), then its record."""
        data = self.data_path(k)
        write_bytes_atomic(data, blob)
        return write_manifest(
            self.record_path(k),
            {
                "format": _RECORD_FORMAT,
                "format_version": _FORMAT_VERSION,
                "key_sha256": key_sha,
                "index": int(k),
                **fields,
                "files": {data.name: sha256_bytes(blob)},
            },
        )

    def record(self, k: int, key_sha: str, *, verify: bool, with_data: bool = False):
        """Shard ``k``'s record (and its verified bytes), or None if not computed yet.

        Returns the record, or ``(record, data bytes)`` with ``with_data`` (the bytes are
        read once; checked against the record when ``verify``).
        """
        data, record_path = self.data_path(k), self.record_path(k)
        if not record_path.exists():
            return None
        hint = (
            f" Delete {str(data)!r} and {str(record_path)!r} and rerun {self.writer} to "
            "recompute it."
        )
        legacy = _legacy_json(record_path)
        if legacy is not None and isinstance(legacy.get("sha256"), str):
            # a record of the first format: the data file's SHA-256 also names the shard
            record = {**legacy, "files": {data.name: legacy["sha256"]}}
            record["content_sha256"] = legacy["sha256"]
        else:
            record = read_manifest(
                record_path,
                format=_RECORD_FORMAT,
                versions=(_FORMAT_VERSION,),
                where=f"{self.what} shard {k}",
                missing="",
                error=CacheCorruptError,
                hint=hint,
            )
        if record.get("key_sha256") != key_sha or record.get("index") != k:
            raise CacheMismatchError(
                f"{self.what} shard {str(record_path)!r} was written for another key than "
                f"{str(self.manifest_path)!r}; delete the directory or use another one."
            )
        digest = record["files"].get(data.name)
        if not data.exists():
            raise CacheCorruptError(
                f"{self.what} shard {str(data)!r} is missing but its record exists; delete "
                f"{str(record_path)!r} and rerun {self.writer} to recompute it."
            )
        if not (verify or with_data):
            return record
        if verify:
            try:
                blob = read_payload(data, digest, where="", error=CacheCorruptError)
            except CacheCorruptError:
                raise CacheCorruptError(
                    f"{self.what} shard {str(data)!r} is corrupted: its SHA-256 differs from "
                    f"the recorded {str(digest)[:12]}….{hint}"
                ) from None
        else:
            blob = data.read_bytes()
        return (record, blob) if with_data else record

    def records(self, n_shards: int, key_sha: str, *, verify: bool, caller: str, with_data=False):
        """Every shard's record (with its bytes), or :class:`CacheIncompleteError`."""
        out, missing = [], []
        for k in range(n_shards):
            rec = self.record(k, key_sha, verify=verify, with_data=with_data)
            (missing.append(k) if rec is None else out.append(rec))
        if missing:
            raise CacheIncompleteError(
                f"{caller}: {len(missing)} of {n_shards} shards of {str(self.cache_dir)!r} "
                f"are not computed yet (first: {missing[:10]}); run {self.writer} on the "
                "missing shard_index values first."
            )
        return out

"""A sharded, resumable, checksummed on-disk cache of embeddings and rewards.

Layout of ``cache_dir``::

    manifest.json            identity key + layout (rows, shard size, number of shards)
    metadata.json            pair metadata of every row (pair_id, chosen, groups, subset,
                             section)
    shards/00000.safetensors embeddings (rows, d) float32 and rewards (rows,) float32
    shards/00000.json        the shard's record: its rows, SHA-256, truncation counts
    merged.safetensors       all shards end to end, written once by ``load_cache`` for mmap
    merged.json              SHA-256 of the merged file and of the shards it was built from

Every JSON file is a checksummed manifest (:mod:`skebrm._manifest`); the shards are
managed by the framework both caches share (:mod:`skebrm._shards`).

The key in ``manifest.json`` records the model (path/name, class, SHA-256 of its weights),
tokenizer, scoring layer, template, ``max_length``, pooling, dtype, package version and the
dataset fingerprint; a cache whose key differs is refused (:class:`CacheMismatchError`)
rather than reused. A shard is complete when its record exists: the data file is written
to a temporary name and renamed, then the record (likewise atomic). A process killed at
any moment leaves complete shards and, at worst, a temporary file that the next run
removes, so rerunning finishes the work without redoing or duplicating rows. Every shard's
checksum is verified before it is reused or loaded (:class:`CacheCorruptError`).

Scale-out: rows are cut into shards of ``shard_size``; worker ``shard_index`` of
``num_shards`` computes shards ``shard_index, shard_index + num_shards, ...``. Workers may
share one directory (they write disjoint files) or write separate ones that
:func:`merge_caches` combines; the result does not depend on which worker did what.
See ``docs/cluster.md`` for Hydra launchers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save
from tqdm.auto import tqdm

from skebrm._io import sha256_file, tmp_name
from skebrm._manifest import read_manifest, write_manifest
from skebrm._shards import (
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    ShardReport,
    ShardStore,
    check_shard_args,
)
from skebrm.extraction._formatting import check_texts
from skebrm.extraction.extractor import (
    EmbeddingExtractor,
    ExtractionResult,
    Rows,
    as_rows,
    prompt_groups,
)

__all__ = [
    "CacheCorruptError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheReport",
    "extract_to_cache",
    "load_cache",
    "merge_caches",
]

_FORMAT = "skebrm.EmbeddingCache"
_MERGED_FORMAT = "skebrm.EmbeddingCacheMerged"


def _store(cache_dir) -> ShardStore:
    return ShardStore(cache_dir, _FORMAT, ".safetensors", "cache", "extract_to_cache")


@dataclass(kw_only=True)
class CacheReport(ShardReport):
    """What one :func:`extract_to_cache` call did.

    Parameters
    ----------
    cache_dir : pathlib.Path
        The cache directory.
    n_shards : int
        Shards in the cache's layout.
    computed : list of int
        The shards this call computed.
    skipped : list of int
        The shards this call found already complete and skipped.
    seconds : float
        Wall time spent computing shards.
    n_rows : int
        Rows in the cache.
    rows_computed : int
        Rows extracted by this call.
    """

    n_rows: int
    rows_computed: int = 0

    @property
    def rows_per_second(self) -> float:
        return self._rate(self.rows_computed)


def _metadata(rows: Rows) -> bytes:
    def lst(a):
        return None if a is None else [None if v is None else str(v) for v in a]

    meta = {
        "pair_id": None if rows.pair_id is None else np.asarray(rows.pair_id).tolist(),
        "chosen": None if rows.chosen is None else np.asarray(rows.chosen, bool).tolist(),
        "groups": prompt_groups(rows.prompts).tolist(),
        "subset": lst(rows.subset),
        "section": lst(rows.section),
    }
    return (json.dumps(meta, sort_keys=True, allow_nan=False) + "\n").encode()


# ------------------------------------------------------------------------- extract
def extract_to_cache(
    extractor: EmbeddingExtractor,
    X,
    cache_dir: str | os.PathLike,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    shard_size: int = 1024,
    overwrite: bool = False,
    verbose: bool | None = None,
) -> CacheReport:
    """Extract ``X`` into a sharded cache, skipping shards that are already complete.

    Parameters
    ----------
    extractor : EmbeddingExtractor
        Fitted or not (it is fitted here if needed).
    X : list of pair dicts or of (prompt, response) tuples
        The whole dataset (every worker passes the same ``X``).
    cache_dir : path-like
        The cache directory (created if missing).
    shard_index, num_shards : int, default=0, 1
        This worker computes shards ``shard_index, shard_index + num_shards, ...``.
    shard_size : int, default=1024
        Rows per shard (part of the layout: changing it needs a new directory).
    overwrite : bool, default=False
        Delete a cache written with another key instead of raising
        :class:`CacheMismatchError`.
    verbose : bool, optional
        Progress bar over this worker's rows (texts per second); defaults to
        ``extractor.verbose``.

    Returns
    -------
    CacheReport
        Which shards this call computed and skipped, and the rows it extracted.
    """
    shard_index, num_shards, shard_size = check_shard_args(
        "extract_to_cache", shard_index, num_shards, shard_size
    )
    if not isinstance(extractor, EmbeddingExtractor):
        raise TypeError(
            "extract_to_cache: extractor must be an EmbeddingExtractor, got "
            f"{type(extractor).__name__}."
        )
    rows = as_rows(X)
    check_texts(rows.prompts, rows.responses)  # refuse bad input before writing anything
    if not hasattr(extractor, "model_"):
        extractor.fit()
    store = _store(cache_dir)
    n = len(rows)
    n_shards = -(-n // shard_size)
    key = dict(extractor.identity(), dataset_sha256=rows.fingerprint(), n_rows=n)
    layout = {"shard_size": shard_size, "n_shards": n_shards}
    manifest = store.open(
        key,
        layout,
        {"metadata.json": _metadata(rows)},
        overwrite=overwrite,
        caller="extract_to_cache",
    )
    key_sha = manifest["key_sha256"]

    report = CacheReport(cache_dir=store.cache_dir, n_rows=n, n_shards=n_shards)
    todo, report.skipped = store.plan(range(shard_index, n_shards, num_shards), key_sha)
    show = extractor.verbose if verbose is None else verbose
    total = sum(min(n, (k + 1) * shard_size) - k * shard_size for k in todo)
    start_time = time.perf_counter()
    with tqdm(total=total, unit="text", desc="cache", disable=not show) as bar:
        for k in todo:
            a, b = k * shard_size, min(n, (k + 1) * shard_size)
            res = extractor.extract(rows.take(a, b))
            blob = save(
                {
                    "embeddings": np.ascontiguousarray(res.embeddings, dtype=np.float32),
                    "rewards": np.ascontiguousarray(res.rewards, dtype=np.float32),
                }
            )
            store.write(
                k,
                key_sha,
                blob,
                {
                    "rows": [a, b],
                    "n_truncated": res.n_truncated,
                    "n_response_truncated": res.n_response_truncated,
                },
            )
            report.computed.append(k)
            report.rows_computed += b - a
            bar.update(b - a)
    report.seconds = time.perf_counter() - start_time
    return report


# ---------------------------------------------------------------------------- load
def _write_merged(store: ShardStore, found: list, n: int, d: int) -> None:
    """Concatenate shards into one safetensors file, streaming (never all in RAM)."""
    emb_bytes, rew_bytes = n * d * 4, n * 4
    header = {
        "embeddings": {"dtype": "F32", "shape": [n, d], "data_offsets": [0, emb_bytes]},
        "rewards": {
            "dtype": "F32",
            "shape": [n],
            "data_offsets": [emb_bytes, emb_bytes + rew_bytes],
        },
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = store.cache_dir / "merged.safetensors"
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name in ("embeddings", "rewards"):
            for _, blob in found:
                arr = load(bytes(blob))[name]
                fh.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    write_manifest(
        store.cache_dir / "merged.json",
        {
            "format": _MERGED_FORMAT,
            "format_version": 2,
            "files": {path.name: digest},
            "shards": [rec["content_sha256"] for rec, _ in found],
            "n_rows": n,
            "dim": d,
        },
    )


def _mmap_merged(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    out = {}
    for name in ("embeddings", "rewards"):
        spec = header[name]
        start, stop = spec["data_offsets"]
        shape = tuple(spec["shape"])
        if spec["dtype"] != "F32" or stop - start != 4 * int(np.prod(shape)):
            raise CacheCorruptError(f"cache file {str(path)!r} has an unexpected layout.")
        out[name] = np.memmap(path, dtype="<f4", mode="r", offset=8 + size + start, shape=shape)
    return out


def load_cache(
    cache_dir: str | os.PathLike, mmap: bool = True, *, verify: bool = True
) -> ExtractionResult:
    """Load a complete cache as an :class:`ExtractionResult`.

    Parameters
    ----------
    cache_dir : path-like
        The directory written by :func:`extract_to_cache` (or :func:`merge_caches`).
    mmap : bool, default=True
        Memory-map the embeddings and rewards (a merged file is written once, streaming,
        next to the shards), so a cache larger than RAM can feed ``fit``. False reads
        the shards into memory.
    verify : bool, default=True
        Check every shard (and the merged file) against its recorded SHA-256.

    Returns
    -------
    ExtractionResult
        Rows in dataset order, with ``pair_id`` / ``chosen`` / ``subset`` / ``section``
        when the cache was built from pairs: ``res.fit_params()`` goes straight to
        ``EnergyRewardCalibrator.fit``.
    """
    caller = "load_cache"
    store = _store(cache_dir)
    manifest = store.read_manifest(caller)
    key_sha, layout = manifest["key_sha256"], manifest["layout"]
    n, size = manifest["key"]["n_rows"], layout["shard_size"]
    merged, merged_json = store.cache_dir / "merged.safetensors", store.cache_dir / "merged.json"
    # with a fresh merged file the shards are checked (each read once) but not parsed
    parsed = not mmap or not (merged.exists() and merged_json.exists())
    found = store.records(
        layout["n_shards"], key_sha, verify=verify, caller=caller, with_data=parsed
    )
    records = [f[0] for f in found] if parsed else found
    if [r.get("rows", [None])[0] for r in records] != list(range(0, n, size)) or (
        records and records[-1]["rows"][1] != n
    ):
        raise CacheCorruptError(
            f"{caller}: the shard records of {str(store.cache_dir)!r} do not tile the rows."
        )
    if mmap:
        fresh = False
        if merged_json.exists() and merged.exists():
            try:
                info = read_manifest(
                    merged_json,
                    format=_MERGED_FORMAT,
                    versions=(2,),
                    where=caller,
                    missing="",
                    error=CacheCorruptError,
                )
                fresh = info.get("shards") == [r["content_sha256"] for r in records]
            except CacheCorruptError:
                fresh = False  # rebuilt from the shards below
            if fresh and verify and sha256_file(merged) != info["files"].get(merged.name):
                raise CacheCorruptError(
                    f"{caller}: {str(merged)!r} is corrupted (SHA-256 mismatch); delete it "
                    "and it will be rebuilt from the shards."
                )
        if not fresh:
            if not parsed:  # the shards' bytes, each read once
                found = store.records(
                    layout["n_shards"], key_sha, verify=verify, caller=caller, with_data=True
                )
            first = load(bytes(found[0][1]))["embeddings"]
            _write_merged(store, found, n, first.shape[1])
        arrays = _mmap_merged(merged)
        emb, rew = arrays["embeddings"], arrays["rewards"]
    else:
        parts = [load(bytes(blob)) for _, blob in found]
        emb = np.concatenate([p["embeddings"] for p in parts])
        rew = np.concatenate([p["rewards"] for p in parts])
    try:
        meta = json.loads(bytes(store.read_side_file(manifest, "metadata.json", caller)))
    except ValueError as exc:
        raise CacheCorruptError(
            f"{caller}: the cache's metadata.json is not JSON ({exc})."
        ) from exc

    def obj(values):
        return None if values is None else np.array(values, dtype=object)

    def ints(values, dtype=None):
        return None if values is None else np.asarray(values, dtype=dtype)

    return ExtractionResult(
        embeddings=emb,
        rewards=rew,
        pair_id=ints(meta["pair_id"]),
        chosen=ints(meta["chosen"], bool),
        subset=obj(meta["subset"]),
        section=obj(meta["section"]),
        groups=ints(meta.get("groups"), np.int64),
        n_truncated=sum(r["n_truncated"] for r in records),
        n_response_truncated=sum(r["n_response_truncated"] for r in records),
        info={"cache_dir": str(store.cache_dir), "key": manifest["key"]},
    )


def merge_caches(sources, dest: str | os.PathLike) -> Path:
    """Combine caches that workers wrote to separate directories into ``dest``.

    Every source must hold the same key and layout. Shards are copied (atomically) in
    shard order, so the result does not depend on the order of ``sources``; a shard that
    two sources hold with different checksums is refused.

    Parameters
    ----------
    sources : sequence of path-like
        The cache directories the workers wrote, at least one.
    dest : path-like
        The directory of the combined cache.

    Returns
    -------
    pathlib.Path
        The combined cache's directory.
    """
    caller = "merge_caches"
    sources = [_store(s) for s in sources]
    if not sources:
        raise ValueError("merge_caches: sources is empty; pass at least one cache directory.")
    dest = _store(dest)
    manifests = [s.read_manifest(caller) for s in sources]
    ref = manifests[0]
    for s, m in zip(sources, manifests):
        if m["key_sha256"] != ref["key_sha256"] or m["layout"] != ref["layout"]:
            diff = sorted(
                k
                for part in ("key", "layout")
                for k in set(ref[part]) | set(m[part])
                if ref[part].get(k) != m[part].get(k)
            )
            raise CacheMismatchError(
                f"merge_caches: {str(s.cache_dir)!r} holds another cache than "
                f"{str(sources[0].cache_dir)!r} (differs in {diff})."
            )
    if dest.manifest_path.exists():
        if dest.read_manifest(caller)["key_sha256"] != ref["key_sha256"]:
            raise CacheMismatchError(f"merge_caches: {str(dest.cache_dir)!r} holds another cache.")
    else:
        meta = bytes(sources[0].read_side_file(ref, "metadata.json", caller))
        dest.open(
            ref["key"], ref["layout"], {"metadata.json": meta}, overwrite=False, caller=caller
        )
    key_sha = ref["key_sha256"]
    for k in range(ref["layout"]["n_shards"]):
        have = dest.record(k, key_sha, verify=True)
        for s in sources:
            found = s.record(k, key_sha, verify=True, with_data=True)
            if found is None:
                continue
            rec, blob = found
            if have is not None:
                if have["files"] != rec["files"]:
                    raise CacheCorruptError(
                        f"merge_caches: shard {k} differs between sources (SHA-256 "
                        f"{next(iter(have['files'].values()))[:12]}… vs "
                        f"{next(iter(rec['files'].values()))[:12]}… in {str(s.cache_dir)!r})."
                    )
                continue
            fields = {
                key: v
                for key, v in rec.items()
                if key not in ("format", "format_version", "key_sha256", "index", "files")
                and key != "content_sha256"
            }
            have = dest.write(k, key_sha, bytes(blob), fields)
    return dest.cache_dir

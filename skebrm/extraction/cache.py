"""A sharded, resumable, checksummed on-disk cache of embeddings and rewards.

Layout of ``cache_dir``::

    manifest.json            identity key + layout (rows, shard size, number of shards)
    metadata.json            pair metadata of every row (pair_id, chosen, subset, section)
    shards/00000.safetensors embeddings (rows, d) float32 and rewards (rows,) float32
    shards/00000.json        the shard's record: its rows, SHA-256, truncation counts
    merged.safetensors       all shards end to end, written once by ``load_cache`` for mmap
    merged.json              SHA-256 of the merged file and of the shards it was built from

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

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from skebrm._io import sha256_file, tmp_name, write_json_atomic
from skebrm.extraction._formatting import check_texts
from skebrm.extraction.extractor import EmbeddingExtractor, ExtractionResult, Rows, as_rows

__all__ = [
    "CacheCorruptError",
    "CacheIncompleteError",
    "CacheMismatchError",
    "CacheReport",
    "extract_to_cache",
    "load_cache",
    "merge_caches",
]

_FORMAT = 1


class CacheMismatchError(ValueError):
    """The cache was written for another model, dataset or setting."""


class CacheCorruptError(OSError):
    """A cache file does not match its recorded checksum or layout."""


class CacheIncompleteError(RuntimeError):
    """Some shards of the cache have not been computed yet."""


@dataclass
class CacheReport:
    """What one :func:`extract_to_cache` call did."""

    cache_dir: Path
    n_rows: int
    n_shards: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    rows_computed: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------- file helpers
def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise CacheCorruptError(f"cache file {str(path)!r} is not valid JSON ({exc}).") from exc


def _key_sha(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _shard_paths(cache_dir: Path, k: int) -> tuple[Path, Path]:
    return cache_dir / "shards" / f"{k:05d}.safetensors", cache_dir / "shards" / f"{k:05d}.json"


def _metadata(rows: Rows) -> dict:
    def lst(a):
        return None if a is None else [None if v is None else str(v) for v in a]

    return {
        "pair_id": None if rows.pair_id is None else np.asarray(rows.pair_id).tolist(),
        "chosen": None if rows.chosen is None else np.asarray(rows.chosen, bool).tolist(),
        "subset": lst(rows.subset),
        "section": lst(rows.section),
    }


def _check_shard_args(shard_index, num_shards, shard_size) -> None:
    for name, value, low in (("num_shards", num_shards, 1), ("shard_size", shard_size, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"extract_to_cache: {name} must be a positive int, got {value!r}.")
    if (
        not isinstance(shard_index, (int, np.integer))
        or isinstance(shard_index, bool)
        or not 0 <= shard_index < num_shards
    ):
        raise ValueError(
            f"extract_to_cache: shard_index must be an int in [0, num_shards={num_shards}), "
            f"got {shard_index!r}."
        )


def _diff_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _verify_shard(cache_dir: Path, k: int, key_sha: str) -> dict | None:
    """The shard's record if the shard is complete and intact, None if not computed."""
    data, record_path = _shard_paths(cache_dir, k)
    if not record_path.exists():
        return None
    record = _read_json(record_path)
    if record.get("key_sha256") != key_sha:
        raise CacheMismatchError(
            f"cache shard {str(record_path)!r} was written for another key than "
            f"{str(cache_dir / 'manifest.json')!r}; delete the directory or use another one."
        )
    if not data.exists():
        raise CacheCorruptError(
            f"cache shard {str(data)!r} is missing but its record exists; delete "
            f"{str(record_path)!r} and rerun extract_to_cache to recompute it."
        )
    digest = sha256_file(data)
    if digest != record["sha256"]:
        raise CacheCorruptError(
            f"cache shard {str(data)!r} is corrupted: SHA-256 {digest[:12]}… differs from "
            f"the recorded {record['sha256'][:12]}…; delete {str(data)!r} and "
            f"{str(record_path)!r} and rerun extract_to_cache to recompute it."
        )
    return record


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
    """
    _check_shard_args(shard_index, num_shards, shard_size)
    if not isinstance(extractor, EmbeddingExtractor):
        raise TypeError(
            "extract_to_cache: extractor must be an EmbeddingExtractor, got "
            f"{type(extractor).__name__}."
        )
    rows = as_rows(X)
    check_texts(rows.prompts, rows.responses)  # refuse bad input before writing anything
    if not hasattr(extractor, "model_"):
        extractor.fit()
    cache_dir = Path(cache_dir)
    n = len(rows)
    n_shards = -(-n // int(shard_size))
    key = dict(extractor.identity(), dataset_sha256=rows.fingerprint(), n_rows=n)
    layout = {"format": _FORMAT, "shard_size": int(shard_size), "n_shards": n_shards}
    manifest = {"key": key, "key_sha256": _key_sha(key), "layout": layout}
    manifest_path = cache_dir / "manifest.json"
    if manifest_path.exists():
        old = _read_json(manifest_path)
        if old.get("key") != key or old.get("layout") != layout:
            diff = _diff_keys(old.get("key", {}), key) + _diff_keys(old.get("layout", {}), layout)
            if not overwrite:
                raise CacheMismatchError(
                    f"extract_to_cache: {str(cache_dir)!r} holds a cache for another setting "
                    f"(differs in {diff}); use another cache_dir or pass overwrite=True to "
                    "replace it."
                )
            for name in ("shards", "merged.safetensors", "merged.json", "metadata.json"):
                target = cache_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            manifest_path.unlink()
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    if not manifest_path.exists():
        write_json_atomic(cache_dir / "metadata.json", _metadata(rows))
        write_json_atomic(manifest_path, manifest)
    key_sha = manifest["key_sha256"]

    mine = list(range(int(shard_index), n_shards, int(num_shards)))
    report = CacheReport(cache_dir=cache_dir, n_rows=n, n_shards=n_shards)
    todo = []
    for k in mine:
        data, _ = _shard_paths(cache_dir, k)
        for stale in data.parent.glob(f".{k:05d}.*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run of this shard
        if _verify_shard(cache_dir, k, key_sha) is None:
            todo.append(k)
        else:
            report.skipped.append(k)
    show = extractor.verbose if verbose is None else verbose
    total = sum(min(n, (k + 1) * shard_size) - k * shard_size for k in todo)
    start_time = time.perf_counter()
    with tqdm(total=total, unit="text", desc="cache", disable=not show) as bar:
        for k in todo:
            a, b = k * shard_size, min(n, (k + 1) * shard_size)
            res = extractor.extract(rows.take(a, b))
            data, record_path = _shard_paths(cache_dir, k)
            tmp = tmp_name(data)
            save_file(
                {
                    "embeddings": np.ascontiguousarray(res.embeddings, dtype=np.float32),
                    "rewards": np.ascontiguousarray(res.rewards, dtype=np.float32),
                },
                str(tmp),
            )
            digest = sha256_file(tmp)
            os.replace(tmp, data)
            write_json_atomic(
                record_path,
                {
                    "key_sha256": key_sha,
                    "index": k,
                    "rows": [a, b],
                    "sha256": digest,
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
def _write_merged(cache_dir: Path, records: list[dict], n: int, d: int) -> None:
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
    path = cache_dir / "merged.safetensors"
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name in ("embeddings", "rewards"):
            for rec in records:
                arr = load_file(str(_shard_paths(cache_dir, rec["index"])[0]))[name]
                fh.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    write_json_atomic(
        cache_dir / "merged.json",
        {"sha256": digest, "shards": [r["sha256"] for r in records], "n_rows": n, "dim": d},
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
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"load_cache: no cache manifest at {str(manifest_path)!r}.")
    manifest = _read_json(manifest_path)
    key_sha, layout = manifest["key_sha256"], manifest["layout"]
    n = manifest["key"]["n_rows"]
    records, missing = [], []
    for k in range(layout["n_shards"]):
        if verify:
            rec = _verify_shard(cache_dir, k, key_sha)
        else:
            rec_path = _shard_paths(cache_dir, k)[1]
            rec = _read_json(rec_path) if rec_path.exists() else None
        if rec is None:
            missing.append(k)
        else:
            records.append(rec)
    if missing:
        raise CacheIncompleteError(
            f"load_cache: {len(missing)} of {layout['n_shards']} shards of {str(cache_dir)!r} "
            f"are not computed yet (first: {missing[:10]}); run extract_to_cache on the "
            "missing shard_index values first."
        )
    if [r["rows"][0] for r in records] != list(range(0, n, layout["shard_size"])) or (
        records and records[-1]["rows"][1] != n
    ):
        raise CacheCorruptError(
            f"load_cache: the shard records of {str(cache_dir)!r} do not tile the rows."
        )
    if mmap:
        merged_json = cache_dir / "merged.json"
        merged = cache_dir / "merged.safetensors"
        fresh = False
        if merged_json.exists() and merged.exists():
            info = _read_json(merged_json)
            fresh = info.get("shards") == [r["sha256"] for r in records]
            if fresh and verify and sha256_file(merged) != info["sha256"]:
                raise CacheCorruptError(
                    f"load_cache: {str(merged)!r} is corrupted (SHA-256 mismatch); delete it "
                    "and it will be rebuilt from the shards."
                )
        if not fresh:
            first = load_file(str(_shard_paths(cache_dir, 0)[0]))["embeddings"]
            _write_merged(cache_dir, records, n, first.shape[1])
        arrays = _mmap_merged(merged)
        emb, rew = arrays["embeddings"], arrays["rewards"]
    else:
        parts = [load_file(str(_shard_paths(cache_dir, r["index"])[0])) for r in records]
        emb = np.concatenate([p["embeddings"] for p in parts])
        rew = np.concatenate([p["rewards"] for p in parts])
    meta = _read_json(cache_dir / "metadata.json")

    def obj(values):
        return None if values is None else np.array(values, dtype=object)

    return ExtractionResult(
        embeddings=emb,
        rewards=rew,
        pair_id=None if meta["pair_id"] is None else np.asarray(meta["pair_id"]),
        chosen=None if meta["chosen"] is None else np.asarray(meta["chosen"], dtype=bool),
        subset=obj(meta["subset"]),
        section=obj(meta["section"]),
        n_truncated=sum(r["n_truncated"] for r in records),
        n_response_truncated=sum(r["n_response_truncated"] for r in records),
        info={"cache_dir": str(cache_dir), "key": manifest["key"]},
    )


def merge_caches(sources, dest: str | os.PathLike) -> Path:
    """Combine caches that workers wrote to separate directories into ``dest``.

    Every source must hold the same key and layout. Shards are copied (atomically) in
    shard order, so the result does not depend on the order of ``sources``; a shard that
    two sources hold with different checksums is refused.
    """
    sources = [Path(s) for s in sources]
    if not sources:
        raise ValueError("merge_caches: sources is empty; pass at least one cache directory.")
    dest = Path(dest)
    manifests = [_read_json(s / "manifest.json") for s in sources]
    ref = manifests[0]
    for s, m in zip(sources, manifests):
        if m["key_sha256"] != ref["key_sha256"] or m["layout"] != ref["layout"]:
            diff = _diff_keys(ref["key"], m["key"]) + _diff_keys(ref["layout"], m["layout"])
            raise CacheMismatchError(
                f"merge_caches: {str(s)!r} holds another cache than {str(sources[0])!r} "
                f"(differs in {diff})."
            )
    (dest / "shards").mkdir(parents=True, exist_ok=True)
    if (dest / "manifest.json").exists():
        if _read_json(dest / "manifest.json")["key_sha256"] != ref["key_sha256"]:
            raise CacheMismatchError(f"merge_caches: {str(dest)!r} holds another cache.")
    else:
        shutil.copyfile(sources[0] / "metadata.json", tmp_name(dest / "metadata.json"))
        os.replace(tmp_name(dest / "metadata.json"), dest / "metadata.json")
        write_json_atomic(dest / "manifest.json", ref)
    for k in range(ref["layout"]["n_shards"]):
        have = _verify_shard(dest, k, ref["key_sha256"])
        for s in sources:
            rec = _verify_shard(s, k, ref["key_sha256"])
            if rec is None:
                continue
            if have is not None:
                if have["sha256"] != rec["sha256"]:
                    raise CacheCorruptError(
                        f"merge_caches: shard {k} differs between sources (SHA-256 "
                        f"{have['sha256'][:12]}… vs {rec['sha256'][:12]}… in {str(s)!r})."
                    )
                continue
            src_data = _shard_paths(s, k)[0]
            dst_data, dst_rec = _shard_paths(dest, k)
            shutil.copyfile(src_data, tmp_name(dst_data))
            os.replace(tmp_name(dst_data), dst_data)
            write_json_atomic(dst_rec, rec)
            have = rec
    return dest

"""A sharded, resumable, checksummed on-disk cache of policy samples.

Same discipline as the embedding cache (:mod:`skebrm.extraction.cache`). Layout of
``cache_dir``::

    manifest.json           identity key + layout (prompts, samples, shard size, shards)
    prompts.json            the prompts, in order
    shards/00000.jsonl      one JSON object per sample: prompt_index, sample_index,
                            text, n_tokens, finish_reason
    shards/00000.json       the shard's record: its prompts, SHA-256 of the data file

The key records the sampler's identity (backend, policy, SHA-256 of its weights, the
sampling settings, the chat template), the prompts' SHA-256, ``n_samples``, the seed and
the format; a cache whose key differs is refused (:class:`CacheMismatchError`) rather
than reused. A shard is complete when its record exists: the data file is written to a
temporary name and renamed, then the record (likewise atomic). A process killed at any
moment leaves complete shards and at worst a temporary file that the next run removes,
so rerunning finishes the work without redoing or duplicating samples. Every shard's
checksum is verified before it is reused or loaded (:class:`CacheCorruptError`).

Shard ``k`` holds prompts ``[k·shard_size, (k + 1)·shard_size)`` and is sampled with the
seed ``SeedSequence([seed, k])``, so its samples do not depend on which worker computed
it or on what was computed before a kill (``shard_index`` / ``num_shards`` split the
shards between workers, as in the embedding cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from skebrm._io import sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic
from skebrm.extraction.cache import CacheCorruptError, CacheIncompleteError, CacheMismatchError
from skebrm.sampling.base import FINISH_REASONS, PolicySampler

__all__ = [
    "PolicySamples",
    "SampleCacheReport",
    "load_samples",
    "prompts_fingerprint",
    "sample_to_cache",
    "shard_seed",
]

_FORMAT = 1


@dataclass
class SampleCacheReport:
    """What one :func:`sample_to_cache` call did."""

    cache_dir: Path
    n_prompts: int
    n_shards: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    tokens_computed: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_computed / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class PolicySamples:
    """Every sample of a complete cache, as arrays of shape (n_prompts, n_samples).

    Attributes
    ----------
    prompts : list of str
    texts : object ndarray of shape (n_prompts, n_samples)
    n_tokens : int ndarray of shape (n_prompts, n_samples)
    finish_reason : object ndarray of shape (n_prompts, n_samples)
    key : dict
        The cache's identity key.
    """

    prompts: list[str]
    texts: np.ndarray
    n_tokens: np.ndarray
    finish_reason: np.ndarray
    key: dict

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def n_samples(self) -> int:
        return int(self.texts.shape[1])

    def rows(self) -> list[tuple[str, str]]:
        """(prompt, completion) of every sample, prompt-major (row ``i·N + j``)."""
        return [(p, str(t)) for p, row in zip(self.prompts, self.texts) for t in row]


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """SHA-256 over the prompts, in order."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise CacheCorruptError(f"cache file {str(path)!r} is not valid JSON ({exc}).") from exc


def _key_sha(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _shard_paths(cache_dir: Path, k: int) -> tuple[Path, Path]:
    return cache_dir / "shards" / f"{k:05d}.jsonl", cache_dir / "shards" / f"{k:05d}.json"


def _diff_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _positive_int(caller: str, name: str, value, low: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{caller}: {name} must be an int >= {low}, got {value!r}.")
    return int(value)


def _verify_shard(cache_dir: Path, k: int, key_sha: str) -> dict | None:
    """The shard's record if the shard is complete and intact, None if not computed."""
    data, record_path = _shard_paths(cache_dir, k)
    if not record_path.exists():
        return None
    record = _read_json(record_path)
    if record.get("key_sha256") != key_sha:
        raise CacheMismatchError(
            f"sample cache shard {str(record_path)!r} was written for another key than "
            f"{str(cache_dir / 'manifest.json')!r}; delete the directory or use another one."
        )
    if not data.exists():
        raise CacheCorruptError(
            f"sample cache shard {str(data)!r} is missing but its record exists; delete "
            f"{str(record_path)!r} and rerun sample_to_cache to recompute it."
        )
    digest = sha256_file(data)
    if digest != record["sha256"]:
        raise CacheCorruptError(
            f"sample cache shard {str(data)!r} is corrupted: SHA-256 {digest[:12]}… differs "
            f"from the recorded {record['sha256'][:12]}…; delete {str(data)!r} and "
            f"{str(record_path)!r} and rerun sample_to_cache to recompute it."
        )
    return record


def shard_seed(seed: int, k: int) -> int:
    """The seed of shard ``k`` of a cache seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def sample_to_cache(
    sampler: PolicySampler,
    prompts: Sequence[str],
    cache_dir: str | os.PathLike,
    *,
    n_samples: int,
    seed: int = 0,
    shard_size: int = 4,
    shard_index: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    verbose: bool = False,
) -> SampleCacheReport:
    """Sample ``n_samples`` completions per prompt into a sharded cache, resumably.

    Parameters
    ----------
    sampler : PolicySampler
    prompts : sequence of str
        Every worker passes the same prompts.
    cache_dir : path-like
    n_samples : int
    seed : int, default=0
    shard_size : int, default=4
        Prompts per shard (part of the layout: changing it needs a new directory).
    shard_index, num_shards : int, default=0, 1
        This worker samples shards ``shard_index, shard_index + num_shards, ...``.
    overwrite : bool, default=False
        Delete a cache written with another key instead of raising
        :class:`CacheMismatchError`.
    verbose : bool, default=False
        Progress bar over this worker's prompts.

    Returns
    -------
    SampleCacheReport
    """
    caller = "sample_to_cache"
    if not isinstance(sampler, PolicySampler):
        raise TypeError(f"{caller}: sampler must be a PolicySampler, got {type(sampler).__name__}.")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{caller}: prompts must be a non-empty sequence of str.")
    n_samples = _positive_int(caller, "n_samples", n_samples)
    seed = _positive_int(caller, "seed", seed, low=0)
    shard_size = _positive_int(caller, "shard_size", shard_size)
    num_shards = _positive_int(caller, "num_shards", num_shards)
    if (
        not isinstance(shard_index, (int, np.integer))
        or isinstance(shard_index, bool)
        or not 0 <= shard_index < num_shards
    ):
        raise ValueError(
            f"{caller}: shard_index must be an int in [0, num_shards={num_shards}), got "
            f"{shard_index!r}."
        )
    cache_dir = Path(cache_dir)
    n = len(prompts)
    n_shards = -(-n // shard_size)
    key = {
        "sampler": sampler.identity(),
        "prompts_sha256": prompts_fingerprint(prompts),
        "n_prompts": n,
        "n_samples": n_samples,
        "seed": seed,
        "format": _FORMAT,
    }
    layout = {"shard_size": shard_size, "n_shards": n_shards}
    manifest = {"key": key, "key_sha256": _key_sha(key), "layout": layout}
    manifest_path = cache_dir / "manifest.json"
    if manifest_path.exists():
        old = _read_json(manifest_path)
        if old.get("key") != key or old.get("layout") != layout:
            diff = _diff_keys(old.get("key", {}), key) + _diff_keys(old.get("layout", {}), layout)
            if not overwrite:
                raise CacheMismatchError(
                    f"{caller}: {str(cache_dir)!r} holds samples for another setting "
                    f"(differs in {diff}); use another cache_dir or pass overwrite=True to "
                    "replace it."
                )
            shutil.rmtree(cache_dir / "shards", ignore_errors=True)
            (cache_dir / "prompts.json").unlink(missing_ok=True)
            manifest_path.unlink()
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    if not manifest_path.exists():
        write_json_atomic(cache_dir / "prompts.json", {"prompts": prompts})
        write_json_atomic(manifest_path, manifest)
    key_sha = manifest["key_sha256"]

    report = SampleCacheReport(cache_dir=cache_dir, n_prompts=n, n_shards=n_shards)
    todo = []
    for k in range(int(shard_index), n_shards, num_shards):
        data, _ = _shard_paths(cache_dir, k)
        for stale in data.parent.glob(f".{data.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a killed run of this shard
        if _verify_shard(cache_dir, k, key_sha) is None:
            todo.append(k)
        else:
            report.skipped.append(k)
    total = sum(min(n, (k + 1) * shard_size) - k * shard_size for k in todo)
    start_time = time.perf_counter()
    with tqdm(total=total, unit="prompt", desc="samples", disable=not verbose) as bar:
        for k in todo:
            a, b = k * shard_size, min(n, (k + 1) * shard_size)
            completions = sampler.sample(prompts[a:b], n_samples, seed=shard_seed(seed, k))
            lines = []
            for i, row in enumerate(completions, start=a):
                for j, c in enumerate(row):
                    if c.finish_reason not in FINISH_REASONS:
                        raise RuntimeError(
                            f"{caller}: the sampler returned finish_reason={c.finish_reason!r}; "
                            f"expected one of {FINISH_REASONS}."
                        )
                    record = {
                        "prompt_index": i,
                        "sample_index": j,
                        "text": c.text,
                        "n_tokens": int(c.n_tokens),
                        "finish_reason": c.finish_reason,
                    }
                    lines.append(json.dumps(record, ensure_ascii=False))
                    report.tokens_computed += int(c.n_tokens)
            data, record_path = _shard_paths(cache_dir, k)
            blob = ("\n".join(lines) + "\n").encode("utf-8")
            write_bytes_atomic(data, blob)  # a temporary name, then renamed
            digest = sha256_bytes(blob)
            write_json_atomic(
                record_path,
                {"key_sha256": key_sha, "index": k, "prompts": [a, b], "sha256": digest},
            )
            report.computed.append(k)
            bar.update(b - a)
    report.seconds = time.perf_counter() - start_time
    return report


def load_samples(cache_dir: str | os.PathLike, *, verify: bool = True) -> PolicySamples:
    """Load a complete sample cache.

    Parameters
    ----------
    cache_dir : path-like
    verify : bool, default=True
        Check every shard against its recorded SHA-256.

    Returns
    -------
    PolicySamples
    """
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"load_samples: no sample cache manifest at {str(manifest_path)!r}."
        )
    manifest = _read_json(manifest_path)
    key, layout = manifest["key"], manifest["layout"]
    n, n_samples = key["n_prompts"], key["n_samples"]
    records, missing = [], []
    for k in range(layout["n_shards"]):
        if verify:
            rec = _verify_shard(cache_dir, k, manifest["key_sha256"])
        else:
            path = _shard_paths(cache_dir, k)[1]
            rec = _read_json(path) if path.exists() else None
        (missing.append(k) if rec is None else records.append(rec))
    if missing:
        raise CacheIncompleteError(
            f"load_samples: {len(missing)} of {layout['n_shards']} shards of {str(cache_dir)!r} "
            f"are not sampled yet (first: {missing[:10]}); run sample_to_cache first."
        )
    prompts = _read_json(cache_dir / "prompts.json")["prompts"]
    if len(prompts) != n or prompts_fingerprint(prompts) != key["prompts_sha256"]:
        raise CacheCorruptError(
            f"load_samples: {str(cache_dir / 'prompts.json')!r} does not match the manifest."
        )
    texts = np.empty((n, n_samples), dtype=object)
    n_tokens = np.full((n, n_samples), -1, dtype=np.int64)
    reason = np.empty((n, n_samples), dtype=object)
    for rec in records:
        with open(_shard_paths(cache_dir, rec["index"])[0], encoding="utf-8") as fh:
            for line in fh:
                s = json.loads(line)
                i, j = s["prompt_index"], s["sample_index"]
                texts[i, j], n_tokens[i, j], reason[i, j] = (
                    s["text"],
                    s["n_tokens"],
                    s["finish_reason"],
                )
    if np.any(n_tokens < 0):
        raise CacheCorruptError(
            f"load_samples: the shards of {str(cache_dir)!r} do not hold every sample."
        )
    return PolicySamples(
        prompts=prompts, texts=texts, n_tokens=n_tokens, finish_reason=reason, key=key
    )

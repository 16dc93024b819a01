"""A sharded, resumable, checksummed on-disk cache of policy samples.

The same shard framework as the embedding cache (:mod:`skebrm._shards`). Layout of
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
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from skebrm._shards import CacheCorruptError, ShardReport, ShardStore, check_shard_args
from skebrm.sampling.base import FINISH_REASONS, PolicySampler

__all__ = [
    "PolicySamples",
    "SampleCacheReport",
    "load_samples",
    "prompts_fingerprint",
    "sample_to_cache",
    "shard_seed",
]

_FORMAT = 1  # the key's "format" (what a sample record holds)


def _store(cache_dir) -> ShardStore:
    return ShardStore(cache_dir, "skebrm.SampleCache", ".jsonl", "sample cache", "sample_to_cache")


@dataclass(kw_only=True)
class SampleCacheReport(ShardReport):
    """What one :func:`sample_to_cache` call did."""

    n_prompts: int
    tokens_computed: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self._rate(self.tokens_computed)


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


def _positive_int(caller: str, name: str, value, low: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{caller}: {name} must be an int >= {low}, got {value!r}.")
    return int(value)


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
    shard_index, num_shards, shard_size = check_shard_args(
        caller, shard_index, num_shards, shard_size
    )
    store = _store(cache_dir)
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
    prompts_blob = (json.dumps({"prompts": prompts}, indent=1) + "\n").encode("utf-8")
    manifest = store.open(
        key, layout, {"prompts.json": prompts_blob}, overwrite=overwrite, caller=caller
    )
    key_sha = manifest["key_sha256"]

    report = SampleCacheReport(cache_dir=store.cache_dir, n_prompts=n, n_shards=n_shards)
    todo, report.skipped = store.plan(range(shard_index, n_shards, num_shards), key_sha)
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
            blob = ("\n".join(lines) + "\n").encode("utf-8")
            store.write(k, key_sha, blob, {"prompts": [a, b]})
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
    caller = "load_samples"
    store = _store(cache_dir)
    manifest = store.read_manifest(caller)
    key, layout = manifest["key"], manifest["layout"]
    n, n_samples = key["n_prompts"], key["n_samples"]
    found = store.records(
        layout["n_shards"], manifest["key_sha256"], verify=verify, caller=caller, with_data=True
    )
    try:
        prompts = json.loads(bytes(store.read_side_file(manifest, "prompts.json", caller)))[
            "prompts"
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheCorruptError(f"{caller}: prompts.json is not a prompts file ({exc}).") from exc
    if len(prompts) != n or prompts_fingerprint(prompts) != key["prompts_sha256"]:
        raise CacheCorruptError(
            f"{caller}: {str(store.cache_dir / 'prompts.json')!r} does not match the manifest."
        )
    texts = np.empty((n, n_samples), dtype=object)
    n_tokens = np.full((n, n_samples), -1, dtype=np.int64)
    reason = np.empty((n, n_samples), dtype=object)
    for rec, blob in found:
        a, b = rec["prompts"]
        for line_no, line in enumerate(bytes(blob).decode("utf-8").splitlines(), start=1):
            where = f"line {line_no} of {str(store.data_path(rec['index']))!r}"
            try:
                sample = json.loads(line)
                i, j = sample["prompt_index"], sample["sample_index"]
                text, tokens, why = sample["text"], sample["n_tokens"], sample["finish_reason"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CacheCorruptError(f"{caller}: {where} is not a sample ({exc}).") from exc
            ints = all(type(v) is int for v in (i, j, tokens))
            if not (ints and a <= i < b and 0 <= j < n_samples and tokens >= 0):
                raise CacheCorruptError(
                    f"{caller}: {where} holds prompt_index={i!r}, sample_index={j!r}, "
                    f"n_tokens={tokens!r}; its "
                    f"shard holds prompts [{a}, {b}) and {n_samples} samples each. Delete "
                    "the shard and its record and rerun sample_to_cache."
                )
            texts[i, j], n_tokens[i, j], reason[i, j] = text, tokens, why
    if np.any(n_tokens < 0):
        raise CacheCorruptError(
            f"{caller}: the shards of {str(store.cache_dir)!r} do not hold every sample."
        )
    return PolicySamples(
        prompts=prompts, texts=texts, n_tokens=n_tokens, finish_reason=reason, key=key
    )

"""The sample cache: round trip, resume after SIGKILL, stale keys, checksums, bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from _sigkill import assert_resumed, kill_after_shards
from conftest import sampling_make_sampler as tiny_sampler

from skebrm.extraction import CacheCorruptError, CacheIncompleteError, CacheMismatchError
from skebrm.sampling import (
    Completion,
    PolicySampler,
    load_samples,
    prompts_fingerprint,
    sample_to_cache,
    shard_seed,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [f"Human: question {i}" + " more" * (i % 3) for i in range(7)]


class CountingSampler(PolicySampler):
    """A deterministic fake policy: the text names the prompt, the sample and the seed."""

    backend = "counting"

    def __init__(self, tag="a", **kw):
        super().__init__(**kw)
        self.tag = tag
        self.calls = []

    def load(self):
        return self

    def identity(self):
        return {"backend": self.backend, "tag": self.tag, "settings": self.settings()}

    def _sample(self, prompts, n_samples, seed):
        self.calls.append((list(prompts), seed))
        return [
            [
                Completion(f"{p}|{j}|{seed}", 3 + j, "stop" if j % 2 else "length")
                for j in range(n_samples)
            ]
            for p in prompts
        ]


def test_round_trip_layout_and_seeds(tmp_path):
    s = CountingSampler()
    report = sample_to_cache(s, PROMPTS, tmp_path, n_samples=3, seed=4, shard_size=3)
    assert report.n_shards == 3 and report.computed == [0, 1, 2] and not report.skipped
    assert report.tokens_computed == 7 * (3 + 4 + 5)
    res = load_samples(tmp_path)
    assert res.prompts == PROMPTS and res.texts.shape == (7, 3) and res.n_samples == 3
    for i, p in enumerate(PROMPTS):
        for j in range(3):
            assert res.texts[i, j] == f"{p}|{j}|{shard_seed(4, i // 3)}"
            assert res.n_tokens[i, j] == 3 + j
            assert res.finish_reason[i, j] == ("stop" if j % 2 else "length")
    assert res.rows()[4] == (PROMPTS[1], res.texts[1, 1])
    assert res.key["prompts_sha256"] == prompts_fingerprint(PROMPTS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["layout"] == {"shard_size": 3, "n_shards": 3}
    # a second call reuses every shard
    again = sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=3, seed=4, shard_size=3)
    assert again.skipped == [0, 1, 2] and not again.computed


def test_workers_split_the_shards(tmp_path):
    for worker in (1, 0):
        sample_to_cache(
            CountingSampler(),
            PROMPTS,
            tmp_path,
            n_samples=2,
            shard_size=2,
            shard_index=worker,
            num_shards=2,
        )
        if worker == 1:
            with pytest.raises(CacheIncompleteError, match="2 of 4 shards"):
                load_samples(tmp_path)
    whole = tmp_path / "whole"
    sample_to_cache(CountingSampler(), PROMPTS, whole, n_samples=2, shard_size=2)
    assert (load_samples(tmp_path).texts == load_samples(whole).texts).all()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sampler": CountingSampler(tag="b")}, "sampler"),
        ({"sampler": CountingSampler(max_new_tokens=5)}, "sampler"),
        ({"prompts": [*PROMPTS[:-1], "other"]}, "prompts_sha256"),
        ({"n_samples": 4}, "n_samples"),
        ({"seed": 1}, "seed"),
        ({"shard_size": 2}, "shard_size"),
    ],
)
def test_stale_key_is_refused(tmp_path, change, field):
    sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=3, shard_size=3)
    kw = {"sampler": CountingSampler(), "prompts": PROMPTS, "n_samples": 3, "shard_size": 3}
    kw.update(change)
    sampler, prompts = kw.pop("sampler"), kw.pop("prompts")
    with pytest.raises(CacheMismatchError, match=rf"differs in \[.*'{field}'"):
        sample_to_cache(sampler, prompts, tmp_path, **kw)
    report = sample_to_cache(sampler, prompts, tmp_path, overwrite=True, **kw)
    assert not report.skipped
    assert load_samples(tmp_path).key["n_samples"] == kw["n_samples"]


def test_corrupted_shard_is_refused(tmp_path):
    sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=2, shard_size=3)
    shard = tmp_path / "shards" / "00001.jsonl"
    shard.write_text(shard.read_text().replace("question", "quest1on"))
    with pytest.raises(CacheCorruptError, match="00001.jsonl' is corrupted"):
        load_samples(tmp_path)
    with pytest.raises(CacheCorruptError, match="is corrupted"):
        sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=2, shard_size=3)
    load_samples(tmp_path, verify=False)  # explicitly unverified
    shard.unlink()
    with pytest.raises(CacheCorruptError, match="is missing but its record exists"):
        load_samples(tmp_path)


def test_an_edited_key_with_its_old_hash_is_refused(tmp_path):
    from skebrm._manifest import seal

    sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=2, shard_size=3)
    path = tmp_path / "manifest.json"
    doc = json.loads(path.read_text())
    doc["key"]["seed"] = 99  # the old key_sha256 is kept, the manifest resealed
    path.write_text(json.dumps(seal(doc)))
    with pytest.raises(CacheCorruptError, match="does not match its key_sha256"):
        load_samples(tmp_path)
    doc["key"]["seed"] = 98  # not even resealed
    path.write_text(json.dumps(doc))
    with pytest.raises(CacheCorruptError, match="was edited after saving"):
        load_samples(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"), [("prompt_index", 99), ("prompt_index", 0), ("sample_index", 5)]
)
def test_an_out_of_range_index_is_a_corrupt_cache(tmp_path, field, value):
    """A shard that names a sample outside its own range (resealed: a consistent edit)."""
    from skebrm._io import sha256_file
    from skebrm._manifest import seal

    sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=2, shard_size=3)
    shard = tmp_path / "shards" / "00001.jsonl"
    lines = shard.read_text().splitlines()
    first = json.loads(lines[0])
    first[field] = value
    shard.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    record_path = tmp_path / "shards" / "00001.json"
    record = json.loads(record_path.read_text())
    record["files"] = {shard.name: sha256_file(shard)}
    record_path.write_text(json.dumps(seal(record)))
    with pytest.raises(CacheCorruptError, match=f"{field}={value}"):
        load_samples(tmp_path)


def test_a_cache_of_the_first_format_still_loads_and_resumes(tmp_path):
    s = CountingSampler()
    sample_to_cache(s, PROMPTS, tmp_path, n_samples=2, shard_size=3, shard_index=0, num_shards=3)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    first = {k: doc[k] for k in ("key", "key_sha256", "layout")}
    (tmp_path / "manifest.json").write_text(json.dumps(first))
    record_path = tmp_path / "shards" / "00000.json"
    rec = json.loads(record_path.read_text())
    ((_, digest),) = rec["files"].items()
    record_path.write_text(
        json.dumps(
            {"key_sha256": rec["key_sha256"], "index": 0, "prompts": [0, 3], "sha256": digest}
        )
    )
    report = sample_to_cache(CountingSampler(), PROMPTS, tmp_path, n_samples=2, shard_size=3)
    assert report.skipped == [0] and report.computed == [1, 2]
    res = load_samples(tmp_path)
    assert res.texts[0, 1] == f"{PROMPTS[0]}|1|{shard_seed(0, 0)}"
    assert res.texts[6, 0] == f"{PROMPTS[6]}|0|{shard_seed(0, 2)}"


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sample cache manifest"):
        load_samples(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples must be an int >= 1, got 0"),
        ({"n_samples": 2, "shard_size": 0}, "shard_size must be an int >= 1"),
        ({"n_samples": 2, "seed": -3}, "seed must be an int >= 0"),
        (
            {"n_samples": 2, "num_shards": 2, "shard_index": 2},
            r"shard_index must be an int in \[0, num_shards=2\)",
        ),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_to_cache(CountingSampler(), PROMPTS, tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()
    with pytest.raises(TypeError, match="sampler must be a PolicySampler"):
        sample_to_cache(object(), PROMPTS, tmp_path / "c", n_samples=1)
    with pytest.raises(ValueError, match="prompts must be a non-empty sequence of str"):
        sample_to_cache(CountingSampler(), [], tmp_path / "c", n_samples=1)


def test_bad_finish_reason_is_refused(tmp_path, monkeypatch):
    s = CountingSampler()
    monkeypatch.setattr(
        s, "_sample", lambda p, n, seed: [[Completion("x", 1, "eos")] * n for _ in p]
    )
    with pytest.raises(RuntimeError, match="finish_reason='eos'"):
        sample_to_cache(s, PROMPTS, tmp_path, n_samples=1)
    assert not list((tmp_path / "shards").glob("*.json"))


def test_real_sampler_round_trip(tmp_path):
    s = tiny_sampler(max_new_tokens=5, batch_size=4)
    sample_to_cache(s, PROMPTS[:3], tmp_path, n_samples=2, shard_size=2, seed=3)
    res = load_samples(tmp_path)
    direct = tiny_sampler(max_new_tokens=5, batch_size=4).sample(
        PROMPTS[:2], 2, seed=shard_seed(3, 0)
    )
    assert [c.text for c in direct[1]] == list(res.texts[1])
    assert res.key["sampler"]["backend"] == "transformers"


_CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from conftest import sampling_make_sampler as tiny_sampler
    from skebrm.sampling import sample_to_cache

    s = tiny_sampler(max_new_tokens=4, batch_size=4)
    sample = s._sample

    def slow(*args):
        time.sleep(0.1)
        return sample(*args)

    s._sample = slow
    prompts = [f"Human: question {{i}}" for i in range(24)]
    sample_to_cache(s, prompts, {cache!r}, n_samples=2, shard_size=2, seed=1)
    """
)


def test_sigkill_mid_run_then_resume(tmp_path):
    cache = tmp_path / "cache"
    before = kill_after_shards(tmp_path, _CHILD, cache, ".jsonl")
    assert 3 <= len(before) < 12

    prompts = [f"Human: question {i}" for i in range(24)]
    s = tiny_sampler(max_new_tokens=4, batch_size=4)
    report = sample_to_cache(s, prompts, cache, n_samples=2, shard_size=2, seed=1)
    assert_resumed(report, before, cache, ".jsonl", 12)
    resumed = load_samples(cache)
    straight = tmp_path / "straight"
    sample_to_cache(
        tiny_sampler(max_new_tokens=4, batch_size=4),
        prompts,
        straight,
        n_samples=2,
        shard_size=2,
        seed=1,
    )
    assert (resumed.texts == load_samples(straight).texts).all()
    assert (resumed.n_tokens == load_samples(straight).n_tokens).all()

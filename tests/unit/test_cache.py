"""The sharded embedding cache: round trip, resume (SIGKILL), keys, checksums, merge."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _sigkill import assert_resumed, kill_after_shards
from conftest import extraction_make_model, extraction_make_tokenizer

from skebrm import BradleyTerryHead
from skebrm.calibrator import EnergyRewardCalibrator
from skebrm.extraction import (
    CacheCorruptError,
    CacheIncompleteError,
    CacheMismatchError,
    EmbeddingExtractor,
    extract_to_cache,
    load_cache,
    merge_caches,
)

ROOT = Path(__file__).resolve().parents[2]


def _pairs(n):
    return [
        {
            "id": str(i),
            "prompt": f"Human: question number {i} about " + "things " * (i % 5),
            "chosen": f"a helpful answer {i}",
            "rejected": f"no {i}",
            "subset": "s" + str(i % 3),
            "section": None,
        }
        for i in range(n)
    ]


def _extractor(max_length=64, seed=0):
    return EmbeddingExtractor(
        extraction_make_model("llama", seed=seed),
        extraction_make_tokenizer(),
        max_length=max_length,
        batch_size=4,
    )


def test_round_trip_matches_direct_extraction(tmp_path):
    pairs = _pairs(11)
    ext = _extractor()
    report = extract_to_cache(ext, pairs, tmp_path, shard_size=5)
    assert report.n_rows == 22 and report.n_shards == 5
    assert report.computed == [0, 1, 2, 3, 4] and report.skipped == []
    direct = ext.extract(pairs)
    for mmap in (True, False):
        res = load_cache(tmp_path, mmap=mmap)
        assert isinstance(res.embeddings, np.memmap) == mmap
        np.testing.assert_allclose(res.embeddings, direct.embeddings, atol=1e-5)
        np.testing.assert_allclose(res.rewards, direct.rewards, atol=1e-5)
        np.testing.assert_array_equal(res.pair_id, direct.pair_id)
        np.testing.assert_array_equal(res.chosen, direct.chosen)
        assert res.subset.tolist() == direct.subset.tolist()
        assert res.section.tolist() == [None] * 22
        assert res.n_truncated == direct.n_truncated
    # memory-mapped arrays and pair metadata go straight into the calibrator's fit
    res = load_cache(tmp_path)
    BradleyTerryHead().fit(res.embeddings, res.rewards, **res.fit_params(groups=False))
    fast = {"hidden": (8,), "reward_hidden": (4,), "n_negatives": 8, "max_epochs": 1}
    cal = EnergyRewardCalibrator(**fast, grid_size=32, random_state=0)
    cal.fit(res.embeddings, res.rewards, **res.fit_params())
    assert cal.predict(res.embeddings).shape == (22,)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for field in (
        "model",
        "weights_sha256",
        "dataset_sha256",
        "template",
        "max_length",
        "pooling",
        "dtype",
        "skebrm_version",
    ):
        assert field in manifest["key"]


def test_fit_params_hold_the_prompt_groups(tmp_path):
    """The calibrator's default validation split then holds out whole prompts."""
    pairs = _pairs(10)
    for i, p in enumerate(pairs):
        p["prompt"] = f"Human: question {i % 3}"  # 3 prompts, several pairs each
    ext = _extractor()
    direct = ext.extract(pairs)
    # reference: a plain loop numbering prompts in order of first appearance
    seen, ref = {}, []
    for p in pairs:
        for _ in ("chosen", "rejected"):
            ref.append(seen.setdefault(p["prompt"], len(seen)))
    params = direct.fit_params()
    assert set(params) == {"pair_id", "chosen", "groups"}
    np.testing.assert_array_equal(params["groups"], ref)
    extract_to_cache(ext, pairs, tmp_path, shard_size=3)
    np.testing.assert_array_equal(load_cache(tmp_path).fit_params()["groups"], ref)
    np.testing.assert_array_equal(load_cache(tmp_path, mmap=False).groups, ref)
    assert "groups" not in direct.fit_params(groups=False)
    fast = {"hidden": (8,), "reward_hidden": (4,), "n_negatives": 8, "max_epochs": 1}
    cal = EnergyRewardCalibrator(
        **fast, grid_size=32, random_state=0, validation_fraction=0.5, guard="off"
    )
    cal.fit(direct.embeddings, direct.rewards, **params)  # groups are routed to the split
    rows = ext.extract([("p", "r"), ("p", "s")])
    assert "groups" not in rows.fit_params()  # no pairs: nothing to split


def test_an_edited_key_is_refused_even_with_its_old_hash_kept(tmp_path):
    from skebrm._manifest import seal

    extract_to_cache(_extractor(), _pairs(3), tmp_path, shard_size=2)
    path = tmp_path / "manifest.json"
    doc = json.loads(path.read_text())
    doc["key"]["max_length"] = 999
    path.write_text(json.dumps(doc))
    with pytest.raises(CacheCorruptError, match="was edited after saving"):
        load_cache(tmp_path)
    path.write_text(json.dumps(seal(doc)))  # resealed, but key_sha256 is the old key's
    with pytest.raises(CacheCorruptError, match="does not match its key_sha256"):
        load_cache(tmp_path)


def _to_first_format(cache):
    """Rewrite a cache as the first format wrote it (no manifests, no groups)."""
    for name in ("merged.safetensors", "merged.json"):
        (cache / name).unlink(missing_ok=True)
    doc = json.loads((cache / "manifest.json").read_text())
    layout = dict(doc["layout"], format=1)
    (cache / "manifest.json").write_text(
        json.dumps({"key": doc["key"], "key_sha256": doc["key_sha256"], "layout": layout})
    )
    meta = json.loads((cache / "metadata.json").read_text())
    meta.pop("groups")
    (cache / "metadata.json").write_text(json.dumps(meta))
    for record_path in (cache / "shards").glob("*.json"):
        rec = json.loads(record_path.read_text())
        ((_, digest),) = rec["files"].items()
        old = {k: rec[k] for k in ("key_sha256", "index", "rows", "n_truncated")}
        old.update(sha256=digest, n_response_truncated=rec["n_response_truncated"])
        record_path.write_text(json.dumps(old))


def test_a_cache_of_the_first_format_still_loads(tmp_path):
    pairs = _pairs(5)
    ext = _extractor()
    extract_to_cache(ext, pairs, tmp_path, shard_size=4)
    ref = load_cache(tmp_path, mmap=False)
    _to_first_format(tmp_path)
    for mmap in (False, True, True):  # the merged file is rebuilt, then reused
        res = load_cache(tmp_path, mmap=mmap)
        np.testing.assert_array_equal(res.embeddings, ref.embeddings)
        np.testing.assert_array_equal(res.pair_id, ref.pair_id)
        assert res.groups is None and "groups" not in res.fit_params()
    shard = tmp_path / "shards" / "00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CacheCorruptError, match="is corrupted"):
        load_cache(tmp_path)


def test_tuples_without_pair_metadata(tmp_path):
    rows = [("p", f"r{i}") for i in range(3)]
    extract_to_cache(_extractor(), rows, tmp_path, shard_size=2)
    res = load_cache(tmp_path)
    assert res.pair_id is None and res.chosen is None and len(res) == 3


def test_shards_split_across_workers_and_resume(tmp_path):
    pairs = _pairs(10)
    first = extract_to_cache(
        _extractor(), pairs, tmp_path, shard_index=1, num_shards=3, shard_size=3
    )
    assert first.computed == [1, 4]
    with pytest.raises(CacheIncompleteError, match=r"5 of 7 shards .* not computed yet"):
        load_cache(tmp_path)
    second = extract_to_cache(_extractor(), pairs, tmp_path, shard_size=3)
    assert second.skipped == [1, 4] and second.computed == [0, 2, 3, 5, 6]
    third = extract_to_cache(_extractor(), pairs, tmp_path, shard_size=3)
    assert third.computed == [] and len(third.skipped) == 7
    assert len(load_cache(tmp_path)) == 20


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_length": 32}, "max_length"),
        ({"seed": 1}, "weights_sha256"),
        ({"data": 1}, "dataset_sha256"),
    ],
)
def test_changed_key_is_never_reused(tmp_path, change, field):
    extract_to_cache(_extractor(), _pairs(4), tmp_path, shard_size=4)
    ext = _extractor(max_length=change.get("max_length", 64), seed=change.get("seed", 0))
    pairs = _pairs(4 + change.get("data", 0))
    with pytest.raises(CacheMismatchError, match=rf"differs in \[.*'{field}'.*\]"):
        extract_to_cache(ext, pairs, tmp_path, shard_size=4)
    report = extract_to_cache(ext, pairs, tmp_path, shard_size=4, overwrite=True)
    assert report.skipped == [] and len(load_cache(tmp_path)) == 2 * len(pairs)


def test_changed_layout_is_refused(tmp_path):
    extract_to_cache(_extractor(), _pairs(4), tmp_path, shard_size=4)
    with pytest.raises(CacheMismatchError, match="shard_size"):
        extract_to_cache(_extractor(), _pairs(4), tmp_path, shard_size=2)


def test_corrupted_shard_is_refused(tmp_path):
    extract_to_cache(_extractor(), _pairs(6), tmp_path, shard_size=4)
    shard = tmp_path / "shards" / "00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match=r"00001.safetensors' is corrupted"):
        load_cache(tmp_path)
    with pytest.raises(CacheCorruptError, match="rerun extract_to_cache to recompute it"):
        extract_to_cache(_extractor(), _pairs(6), tmp_path, shard_size=4)


def test_corrupted_merged_file_is_refused(tmp_path):
    extract_to_cache(_extractor(), _pairs(3), tmp_path, shard_size=4)
    load_cache(tmp_path)
    merged = tmp_path / "merged.safetensors"
    raw = bytearray(merged.read_bytes())
    raw[-2] ^= 0xFF
    merged.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="merged.safetensors' is corrupted"):
        load_cache(tmp_path)


def test_bad_input_writes_nothing(tmp_path):
    pairs = _pairs(3)
    pairs[2]["rejected"] = 5
    with pytest.raises(TypeError, match=r"pairs\[2\]\['rejected'\] must be a str"):
        extract_to_cache(_extractor(), pairs, tmp_path / "c")
    with pytest.raises(ValueError, match="both empty"):
        extract_to_cache(_extractor(), [("", "")], tmp_path / "c")
    with pytest.raises(ValueError, match="missing the field"):
        extract_to_cache(_extractor(), [{"prompt": "p", "chosen": "c"}], tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shard_index": 2, "num_shards": 2}, r"shard_index must be an int in \[0, num_shards=2\)"),
        ({"num_shards": 0}, "num_shards must be a positive int"),
        ({"shard_size": 0}, "shard_size must be a positive int"),
    ],
)
def test_bad_shard_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        extract_to_cache(_extractor(), _pairs(2), tmp_path, **kwargs)


def test_merge_separate_worker_directories(tmp_path):
    pairs = _pairs(9)
    for i in range(3):
        extract_to_cache(
            _extractor(), pairs, tmp_path / f"w{i}", shard_index=i, num_shards=3, shard_size=4
        )
    a = merge_caches([tmp_path / "w2", tmp_path / "w0", tmp_path / "w1"], tmp_path / "m1")
    b = merge_caches([tmp_path / "w0", tmp_path / "w1", tmp_path / "w2"], tmp_path / "m2")
    ra, rb = load_cache(a), load_cache(b)
    np.testing.assert_array_equal(ra.embeddings, rb.embeddings)
    single = tmp_path / "single"
    extract_to_cache(_extractor(), pairs, single, shard_size=4)
    np.testing.assert_array_equal(ra.embeddings, load_cache(single).embeddings)
    extract_to_cache(_extractor(max_length=32), pairs, tmp_path / "other", shard_size=4)
    with pytest.raises(CacheMismatchError, match="holds another cache"):
        merge_caches([tmp_path / "w0", tmp_path / "other"], tmp_path / "m3")


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cache manifest"):
        load_cache(tmp_path)


_CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from conftest import extraction_make_model, extraction_make_tokenizer
    from skebrm.extraction import EmbeddingExtractor, extract_to_cache

    ext = EmbeddingExtractor(
        extraction_make_model("llama"), extraction_make_tokenizer(), max_length=64, batch_size=4
    )
    extract = ext.extract

    def slow_extract(X):
        time.sleep(0.05)
        return extract(X)

    ext.extract = slow_extract
    rows = [(f"prompt {{i}}", f"response {{i}}") for i in range(60)]
    print("start", flush=True)
    extract_to_cache(ext, rows, {cache!r}, shard_size=2)
    """
)


def test_sigkill_mid_run_then_resume(tmp_path):
    cache = tmp_path / "cache"
    before = kill_after_shards(tmp_path, _CHILD, cache, ".safetensors")
    assert 3 <= len(before) < 30

    ext = EmbeddingExtractor(
        extraction_make_model("llama"), extraction_make_tokenizer(), max_length=64, batch_size=4
    )
    rows = [(f"prompt {i}", f"response {i}") for i in range(60)]
    report = extract_to_cache(ext, rows, cache, shard_size=2)
    assert_resumed(report, before, cache, ".safetensors", 30)
    res = load_cache(cache)
    direct = ext.extract(rows)
    assert res.embeddings.shape == direct.embeddings.shape == (60, 32)
    np.testing.assert_allclose(res.embeddings, direct.embeddings, atol=1e-5)
    np.testing.assert_allclose(res.rewards, direct.rewards, atol=1e-5)

"""The server's request parsing and the micro-batcher, without a model or a socket."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")

from skebrm import RewardScores
from skebrm.serving import (
    MicroBatcher,
    RequestError,
    ServerBusyError,
    ServerSettings,
    parse_reward_request,
)

S = ServerSettings(max_texts_per_request=3, max_chars_per_text=20)


def test_query_with_prompts_is_split_at_the_prompt():
    payload = {"query": ["Q: hi A: hello", "Q: x A: y"], "prompts": ["Q: hi", "Q: x A:"]}
    assert parse_reward_request(payload, S) == (["Q: hi", "Q: x A:"], [" A: hello", " y"])


def test_query_without_prompts_is_a_response_to_an_empty_prompt():
    assert parse_reward_request({"query": ["abc"], "labels": [None]}, S) == ([""], ["abc"])


def test_suffixes_are_stripped_from_responses():
    s = ServerSettings(strip_suffixes=("</s>", "<eot>"))
    got = parse_reward_request({"query": ["p r</s><eot></s>"], "prompts": ["p"]}, s)
    assert got == (["p"], [" r"])


@pytest.mark.parametrize(
    ("payload", "status", "match"),
    [
        ([1, 2], 422, "must be a JSON object"),
        ({"queries": ["a"]}, 422, "'query' is required"),
        ({"query": "abc"}, 422, r"'query' must be a list, got str \(string\)"),
        ({"query": []}, 422, "'query' is empty"),
        ({"query": ["a", 3]}, 422, r"'query'\[1\] must be a string, got a JSON number"),
        ({"query": ["a"] * 4}, 413, "'query' has 4 texts, above this server's limit of 3"),
        ({"query": ["x" * 21]}, 413, r"'query'\[0\] has 21 characters, above .* limit of 20"),
        ({"query": ["a"], "prompts": ["a", "b"]}, 422, "'prompts' has 2 entries but 'query' has 1"),
        ({"query": ["ab"], "prompts": [None]}, 422, r"'prompts'\[0\] must be a string"),
        ({"query": ["ab"], "prompts": ["b"]}, 422, r"'query'\[0\] does not start with"),
        ({"query": ["ab"], "labels": "x"}, 422, "'labels' must be a list"),
        ({"query": ["a", "b"], "labels": [1]}, 422, "'labels' has 1 entries"),
        ({"query": ["  "]}, 422, r"'query'\[0\] is empty: there is nothing to score"),
    ],
)
def test_bad_requests_name_the_problem(payload, status, match):
    with pytest.raises(RequestError, match=match) as info:
        parse_reward_request(payload, S)
    assert info.value.status == status


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_batch_size must be a positive int, got 0"):
        ServerSettings(max_batch_size=0)
    with pytest.raises(ValueError, match="strip_suffixes must be non-empty strings"):
        ServerSettings(strip_suffixes=("",))


def _score(prompts, completions):
    """A deterministic per-row score: the reference the batched results must equal."""
    n = np.array([len(p) + 10 * len(c) for p, c in zip(prompts, completions)], dtype=float)
    return RewardScores(n, n + 0.5, n / 100)


def _requests(k):
    rng = np.random.default_rng(0)
    out = []
    for i in range(k):
        m = int(rng.integers(1, 5))
        out.append((["p" * int(rng.integers(0, 9)) for _ in range(m)], [f"c{i}"] * m))
    return out


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows():
    calls = []

    def score(p, c):
        calls.append(len(p))
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=8, max_wait_s=0.05)
        await batcher.start()
        reqs = _requests(20)
        results = await asyncio.gather(*(batcher.submit(p, c) for p, c in reqs))
        await batcher.stop()
        return reqs, results, batcher

    reqs, results, batcher = asyncio.run(main())
    for (p, c), got in zip(reqs, results):
        ref = _score(p, c)
        np.testing.assert_array_equal(got.refined_reward, ref.refined_reward)
        np.testing.assert_array_equal(got.std, ref.std)
    total = sum(len(p) for p, _ in reqs)
    assert sum(calls) == total and max(calls) <= 8
    assert len(calls) < len(reqs)  # requests shared batches
    assert batcher.batches == len(calls) and batcher.texts == total
    assert batcher.pending_texts == 0


def test_an_oversize_request_is_scored_alone():
    calls = []

    def score(p, c):
        calls.append(len(p))
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=4, max_wait_s=0.01)
        await batcher.start()
        got = await batcher.submit(["a"] * 9, ["b"] * 9)
        await batcher.stop()
        return got

    assert len(asyncio.run(main())) == 9 and calls == [9]


def test_a_failing_request_does_not_fail_its_batch_mates():
    def score(p, c):
        if "boom" in c:
            raise ValueError("cannot score boom")
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=16, max_wait_s=0.05)
        await batcher.start()
        results = await asyncio.gather(
            batcher.submit(["a"], ["ok1"]),
            batcher.submit(["b"], ["boom"]),
            batcher.submit(["c", "d"], ["ok2", "ok3"]),
            return_exceptions=True,
        )
        await batcher.stop()
        return results

    ok1, bad, ok2 = asyncio.run(main())
    assert isinstance(bad, ValueError) and "boom" in str(bad)
    np.testing.assert_array_equal(ok1.base_reward, _score(["a"], ["ok1"]).base_reward)
    np.testing.assert_array_equal(ok2.base_reward, _score(["c", "d"], ["ok2", "ok3"]).base_reward)


def test_too_many_pending_texts_is_busy_and_stop_drains_the_queue():
    release = threading.Event()

    def slow(p, c):
        release.wait(5)
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(slow, max_batch_size=2, max_wait_s=0.0, max_pending_texts=3)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a", "b"], ["x", "y"]))
        await asyncio.sleep(0.05)
        with pytest.raises(ServerBusyError, match="2 texts are waiting"):
            await batcher.submit(["a", "b"], ["x", "y"])
        second = asyncio.ensure_future(batcher.submit(["c"], ["z"]))
        await asyncio.sleep(0.05)
        release.set()
        await batcher.stop()  # answers what was queued before stopping
        return first.result(), second.result()

    a, b = asyncio.run(main())
    assert len(a) == 2 and len(b) == 1

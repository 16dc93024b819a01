"""The server's request parsing and the micro-batcher, without a model or a socket."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")

from conftest import openrlhf_payload_old, openrlhf_payload_today

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


# ------------------------------------------------------------- settings cross-checks
def test_settings_refuse_a_request_limit_above_the_queue_limit():
    with pytest.raises(
        ValueError, match=r"max_texts_per_request=300 is above max_pending_texts=200"
    ):
        ServerSettings(max_texts_per_request=300, max_pending_texts=200)
    ServerSettings(max_texts_per_request=200, max_pending_texts=200)  # equal is fine


def test_cli_refuses_impossible_settings_before_loading_anything(tmp_path, capsys):
    from skebrm.serving.cli import main

    code = main(
        ["--model", str(tmp_path), "--max-texts-per-request", "10", "--max-pending-texts", "5"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "max_texts_per_request=10" in err and "max_pending_texts=5" in err


# ------------------------------------------------------------- special tokens at both ends
def _tokens(*tokens):
    return ServerSettings(strip_tokens=tokens)


def test_special_tokens_are_stripped_at_both_ends_before_the_prefix_check():
    s = _tokens("<pad>", "<s>", "</s>")
    payload = {
        "query": ["<pad><pad><s><s>Q: hi A: hello</s><pad><pad>"],
        "prompts": ["<s>Q: hi"],
    }
    assert parse_reward_request(payload, s) == (["Q: hi"], [" A: hello"])
    # without the tokens the prefix check fails, as before
    with pytest.raises(RequestError, match="does not start with"):
        parse_reward_request(payload, ServerSettings(strip_tokens=()))


def test_stripping_keeps_special_tokens_inside_the_text_and_spaces_of_the_text():
    s = _tokens("<pad>", "</s>")
    got = parse_reward_request({"query": ["<pad> <pad> a</s>b </s> <pad>"]}, s)
    assert got == ([""], [" a</s>b "])
    # a response that starts with a stripped token (the prompt's end was one) loses it
    got = parse_reward_request({"query": ["P</s>R</s>"], "prompts": ["P</s>"]}, s)
    assert got == (["P"], ["R"])


def test_a_longer_token_is_stripped_before_its_prefix():
    s = _tokens("<|end|>", "<|end|>x")
    assert parse_reward_request({"query": ["ab<|end|>x"]}, s) == ([""], ["ab"])


def test_a_query_of_special_tokens_only_is_empty():
    with pytest.raises(RequestError, match="nothing to score"):
        parse_reward_request({"query": ["<pad></s>"]}, _tokens("<pad>", "</s>"))


def test_strip_tokens_are_validated():
    with pytest.raises(ValueError, match="strip_tokens must be non-empty strings"):
        ServerSettings(strip_tokens=("<pad>", ""))


def test_special_tokens_of_a_tokenizer(extraction_tokenizer):
    from skebrm.serving import special_tokens

    assert special_tokens(extraction_tokenizer) == (
        ("<pad>", "pad_token"),
        ("</s>", "eos_token"),
        ("<s>", "bos_token"),
    )


POLICY_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _policy():
    from conftest import extraction_make_tokenizer

    return extraction_make_tokenizer(POLICY_TEMPLATE)


def _chat_prompt(tok, text):
    messages = [{"role": "user", "content": text}]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def test_openrlhf_today_payload_loses_the_policy_eos():
    tok = _policy()
    prompt = _chat_prompt(tok, "How do I boil an egg?")
    payload = openrlhf_payload_today(tok, prompt, "Simmer it for 9 minutes.")
    assert payload["query"][0].endswith("minutes.</s>")
    s = ServerSettings(strip_tokens=tuple(t for t, _ in _special(tok)))
    prompts, responses = parse_reward_request(payload, s)
    assert responses == ["Simmer it for 9 minutes."]
    assert prompts == [prompt.removeprefix("<s>")]


def test_openrlhf_prompt_cut_from_the_left_is_read_as_its_end():
    tok = _policy()
    prompt = _chat_prompt(tok, "Tell me, in a few words, " + "how an egg boils " * 12 + "?")
    response = "Simmer it for 9 minutes."
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    payload = openrlhf_payload_today(tok, prompt, response, max_prompt_tokens=n_prompt - 5)
    assert not payload["query"][0].startswith(prompt)
    s = ServerSettings(strip_tokens=tuple(t for t, _ in _special(tok)))
    prompts, responses = parse_reward_request(payload, s)
    assert responses == [response]
    # the RM scores the response against the whole prompt, as sent beside the query
    assert prompts == [prompt.removeprefix("<s>")]
    # a query that keeps fewer than MIN_PROMPT_OVERLAP characters of its prompt is refused
    from skebrm.serving.app import MIN_PROMPT_OVERLAP

    short = openrlhf_payload_today(tok, prompt, response, max_prompt_tokens=2)
    kept = short["query"][0].removesuffix(response + "</s>")
    assert 0 < len(kept) < MIN_PROMPT_OVERLAP and prompt.endswith(kept)
    with pytest.raises(RequestError, match="nor with its last 32 or more characters"):
        parse_reward_request(short, s)


@given(
    prompt=st.text(alphabet="ab", max_size=40),
    query=st.text(alphabet="ab", max_size=40),
)
@settings(max_examples=300, deadline=None)
def test_prompt_overlap_is_the_longest_prompt_end_the_query_starts_with(prompt, query):
    from skebrm.serving.app import _prompt_overlap

    naive = max(m for m in range(min(len(prompt), len(query)) + 1) if prompt.endswith(query[:m]))
    assert _prompt_overlap(prompt, query) == naive


def test_response_start_skips_a_replacement_character_left_by_a_cut():
    from skebrm.serving.app import MIN_PROMPT_OVERLAP, _response_start

    prompt = "Ünïcödé prompt, long enough to be cut by the policy's trainer: x" * 2
    kept = prompt[-40:]
    assert _response_start(prompt, prompt + " answer") == len(prompt)
    assert _response_start(prompt, "\ufffd" + kept + " answer") == 1 + len(kept)
    assert _response_start(prompt, kept[-MIN_PROMPT_OVERLAP:] + "!") == MIN_PROMPT_OVERLAP
    assert _response_start(prompt, kept[-MIN_PROMPT_OVERLAP + 1 :] + "!") is None
    assert _response_start(prompt, "unrelated query") is None


def test_openrlhf_old_left_padded_batch_with_a_doubled_bos():
    tok = _policy()
    prompts = [_chat_prompt(tok, "Hi"), _chat_prompt(tok, "A much longer question, padded less")]
    responses = ["Hello there, how can I help you today?", "Short."]
    payload = openrlhf_payload_old(tok, prompts, responses)
    assert payload["query"][0].startswith("<pad><pad>") and "<s><s><|user|>" in payload["query"][0]
    assert "Short.</s><pad><pad>" in payload["query"][1] and payload["query"][1].endswith("d>")
    with pytest.raises(RequestError, match="does not start with"):
        parse_reward_request(payload, ServerSettings(strip_tokens=()))
    s = ServerSettings(strip_tokens=tuple(t for t, _ in _special(tok)))
    got_prompts, got_responses = parse_reward_request(payload, s)
    assert got_responses == responses
    assert got_prompts == [p.removeprefix("<s>") for p in prompts]


def _special(tok):
    from skebrm.serving import special_tokens

    return special_tokens(tok)


def test_strip_token_sources_name_where_each_token_comes_from(extraction_tokenizer):
    from skebrm.serving.app import strip_token_sources

    rm = extraction_tokenizer
    policy = _policy()
    policy.eos_token = "<|im_end|>"
    got = strip_token_sources(rm, policy, extra=("<|endoftext|>", "<pad>"))
    assert got == [
        ("<pad>", "RM pad_token"),
        ("</s>", "RM eos_token"),
        ("<s>", "RM bos_token"),
        ("<|im_end|>", "policy eos_token"),
        ("<|endoftext|>", "--strip-token"),
    ]
    assert strip_token_sources(rm, None, include_rm=False) == []


# ------------------------------------------------------------- the app, in process
class _FakeBundle:
    """What create_app needs of a RefinedRewardModel; ``score`` is :func:`_score`."""

    __name__ = "refined_reward"
    penalty = 0.5
    extraction_settings = {"model": "fake", "max_length": 64}

    def __init__(self, tokenizer=None, score=_score):
        self.tokenizer = tokenizer
        self.score = score


def _client(bundle, settings=None):
    from fastapi.testclient import TestClient

    from skebrm.serving import create_app

    return TestClient(create_app(bundle, settings), raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"query": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"query": ["a"], "labels": [' + b"7" * 5000 + b"]}", "too many digits"),
    ],
    ids=["deeply-nested", "5000-digit-int"],
)
def test_json_python_cannot_read_is_a_400_with_a_fixed_message(body, match):
    with _client(_FakeBundle()) as client:
        resp = client.post("/get_reward", content=body)
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert match in detail
    assert "Error" not in detail and "sys.set_int_max_str_digits" not in detail


def test_an_internal_error_does_not_echo_the_exception_to_the_client():
    def broken(prompts, completions):
        raise RuntimeError("secret /srv/models/rm path and internals")

    with _client(_FakeBundle(score=broken)) as client:
        resp = client.post("/get_reward", json={"query": ["a"]})
    assert resp.status_code == 500
    assert "secret" not in resp.text and "RuntimeError" not in resp.text
    assert resp.json()["detail"] == "internal server error; the server's log has the details."


def test_a_large_body_is_parsed_off_the_event_loop(monkeypatch):
    """A slow parse of one big body must not hold up another client's request."""
    import json as real_json
    import time
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from skebrm.serving import app as app_module

    def slow_loads(body):
        if len(body) > app_module.THREADED_PARSE_BYTES:
            time.sleep(1.5)
        return real_json.loads(body)

    fake_json = SimpleNamespace(
        loads=slow_loads, JSONDecodeError=real_json.JSONDecodeError, dumps=real_json.dumps
    )
    monkeypatch.setattr(app_module, "json", fake_json)
    big = {"query": ["x" * 2000] * 256}  # 0.5 MB
    assert len(real_json.dumps(big)) > app_module.THREADED_PARSE_BYTES
    with _client(_FakeBundle(), ServerSettings(max_chars_per_text=3000)) as client:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(client.post, "/get_reward", json=big)
            time.sleep(0.3)  # the big request is being parsed
            t0 = time.perf_counter()
            small = client.post("/get_reward", json={"query": ["abc"]})
            waited = time.perf_counter() - t0
            assert small.status_code == 200 and not slow.done()
            assert waited < 1.0, f"the small request waited {waited:.2f} s"
            assert slow.result().status_code == 200


def test_the_app_strips_the_rm_tokenizers_special_tokens_by_default(extraction_tokenizer):
    seen = []

    def score(prompts, completions):
        seen.append((list(prompts), list(completions)))
        return _score(prompts, completions)

    bundle = _FakeBundle(extraction_tokenizer, score)
    with _client(bundle) as client:
        resp = client.post("/get_reward", json={"query": ["<s>P R</s><pad>"], "prompts": ["P"]})
        health = client.get("/health").json()
    assert resp.status_code == 200, resp.text
    assert seen == [(["P"], [" R"])]
    assert health["limits"]["strip_tokens"] == ["<pad>", "</s>", "<s>"]
    with _client(bundle, ServerSettings(strip_tokens=())) as client:
        resp = client.post("/get_reward", json={"query": ["<s>P R</s><pad>"], "prompts": ["P"]})
    assert resp.status_code == 422


def test_the_start_up_line_names_each_token_and_its_source():
    from skebrm.serving.cli import build_parser, describe_stripping

    line = describe_stripping([("<pad>", "RM pad_token"), ("<|im_end|>", "policy eos_token")])
    assert line == (
        "stripping from both ends of queries and prompts: '<pad>' (RM pad_token), "
        "'<|im_end|>' (policy eos_token)."
    )
    assert describe_stripping([], ("</s>",)) == (
        "stripping no special tokens from queries and prompts; from the end of responses: '</s>'."
    )
    args = build_parser().parse_args(
        ["--model", "m", "--policy-tokenizer", "p", "--strip-token", "<a>", "--strip-token", "<b>"]
    )
    assert (args.policy_tokenizer, args.strip_token) == ("p", ["<a>", "<b>"])
    assert not args.keep_rm_special_tokens


def test_a_scores_object_with_a_scalar_field_is_split_per_request():
    """RewardScores carries ``base_served`` (a bool) besides its per-text arrays."""
    from dataclasses import dataclass

    @dataclass
    class Scores:
        base_reward: np.ndarray
        served: bool

    def score(p, c):
        return Scores(np.arange(len(p), dtype=float), True)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=8, max_wait_s=0.05)
        await batcher.start()
        both = asyncio.gather(batcher.submit(["a"], ["x"]), batcher.submit(["b", "c"], ["y", "z"]))
        got = await asyncio.wait_for(both, 5)
        await batcher.stop()
        return got, batcher

    (one, two), batcher = asyncio.run(main())
    assert batcher.batches == 1
    np.testing.assert_array_equal(one.base_reward, [0.0])
    np.testing.assert_array_equal(two.base_reward, [1.0, 2.0])
    assert one.served is True and two.served is True


def test_an_error_after_scoring_fails_the_requests_and_the_batcher_keeps_serving():
    calls = []

    def score(p, c):
        calls.append(len(p))
        if len(calls) == 1:
            return object()  # nothing the batcher can split
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=8, max_wait_s=0.0)
        await batcher.start()
        first = await asyncio.wait_for(
            asyncio.gather(batcher.submit(["a"], ["x"]), return_exceptions=True), 5
        )
        second = await asyncio.wait_for(batcher.submit(["b"], ["y"]), 5)
        await batcher.stop()
        return first[0], second, batcher

    first, second, batcher = asyncio.run(main())
    assert isinstance(first, Exception)
    np.testing.assert_array_equal(second.base_reward, _score(["b"], ["y"]).base_reward)
    assert batcher.pending_texts == 0


# ------------------------------------------------------------- chunked scoring
def test_a_request_in_the_first_chunk_is_answered_before_the_last_chunk_is_scored():
    """A micro-batch scored in chunks answers each request as soon as its chunk is done,
    so its client can send the next request while the other chunks are scored."""
    release = threading.Event()
    calls = []

    def score(p, c):
        calls.append(list(c))
        if len(calls) > 1:
            assert release.wait(5), "the test did not release the second chunk"
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=8, max_wait_s=0.2, chunk_size=4)
        await batcher.start()
        reqs = [(["p", "p"], [f"c{i}", f"c{i}"]) for i in range(4)]
        futures = [asyncio.ensure_future(batcher.submit(p, c)) for p, c in reqs]
        first = await asyncio.wait_for(asyncio.gather(*futures[:2]), 5)
        later_pending = [not f.done() for f in futures[2:]]
        release.set()
        rest = await asyncio.wait_for(asyncio.gather(*futures[2:]), 5)
        await batcher.stop()
        return reqs, [*first, *rest], later_pending, batcher

    reqs, results, later_pending, batcher = asyncio.run(main())
    assert later_pending == [True, True]  # answered while the second chunk was still running
    assert calls == [["c0", "c0", "c1", "c1"], ["c2", "c2", "c3", "c3"]]
    for (p, c), got in zip(reqs, results):
        np.testing.assert_array_equal(got.refined_reward, _score(p, c).refined_reward)
    assert batcher.batches == 2 and batcher.texts == 8 and batcher.pending_texts == 0


def test_a_request_that_waited_while_the_scorer_was_busy_is_scored_without_waiting_again():
    """max_wait_s counts from when a request arrived: one that queued while the previous
    batch was scored goes to the scorer as soon as it is free."""
    release = threading.Event()
    times = []

    def score(p, c):
        times.append(("start", time.perf_counter()))
        if c == ["first"]:
            assert release.wait(5)
        times.append(("end", time.perf_counter()))
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=8, max_wait_s=1.0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(["a"], ["first"]))
        await asyncio.sleep(1.1)  # the first batch is with the scorer
        second = asyncio.ensure_future(batcher.submit(["b"], ["second"]))
        await asyncio.sleep(1.1)  # the second request has waited max_wait_s
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        await batcher.stop()

    asyncio.run(main())
    (_, _), (_, first_end), (_, second_start), _ = times
    assert second_start - first_end < 0.5  # the old code waited another max_wait_s here


def test_chunks_hold_whole_requests_of_similar_length_and_errors_stay_with_their_request():
    calls = []

    def score(p, c):
        calls.append(len(p))
        if "boom" in c:
            raise ValueError("cannot score boom")
        return _score(p, c)

    async def main():
        batcher = MicroBatcher(score, max_batch_size=64, max_wait_s=0.2, chunk_size=4)
        await batcher.start()
        reqs = [*_requests(12), (["x"], ["boom"]), (["y"] * 9, ["big"] * 9)]
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(p, c) for p, c in reqs), return_exceptions=True), 5
        )
        await batcher.stop()
        return reqs, results, batcher

    reqs, results, batcher = asyncio.run(main())
    for (p, c), got in zip(reqs, results):
        if "boom" in c:
            assert isinstance(got, ValueError) and "boom" in str(got)
            continue
        ref = _score(p, c)
        np.testing.assert_array_equal(got.refined_reward, ref.refined_reward)
        np.testing.assert_array_equal(got.std, ref.std)
    # one micro-batch; every chunk within chunk_size, except the 9-text request, alone;
    # the chunk with "boom" is retried request by request
    assert 9 in calls and all(n <= 4 for n in calls if n != 9)
    assert batcher.pending_texts == 0


def test_chunks_are_balanced_and_sorted_by_length():
    from skebrm.serving.batcher import _Job

    batcher = MicroBatcher(_score, max_batch_size=64, chunk_size=8)
    jobs = [_Job(["p" * k, "q"], ["c", "c"], None) for k in (9, 1, 5, 3, 7)]
    chunks = batcher._chunks(jobs)  # 10 texts in chunks of at most 8: 6 + 4, not 8 + 2
    assert [[len(j.prompts[0]) for j in chunk] for chunk in chunks] == [[1, 3, 5], [7, 9]]
    assert MicroBatcher(_score, max_batch_size=64)._chunks(jobs) == [jobs]


def test_chunk_size_is_validated_and_the_app_defaults_to_the_rm_batch_size():
    with pytest.raises(ValueError, match="chunk_size must be a positive int or None"):
        MicroBatcher(_score, chunk_size=0)
    with pytest.raises(ValueError, match="score_chunk_size must be a positive int or None"):
        ServerSettings(score_chunk_size=0)
    from skebrm.serving import create_app

    bundle = _FakeBundle()
    assert create_app(bundle).state.batcher.chunk_size is None  # no batch_size: one call
    bundle.batch_size = 16
    assert create_app(bundle).state.batcher.chunk_size == 16
    settings = ServerSettings(score_chunk_size=64)
    assert create_app(bundle, settings).state.batcher.chunk_size == 64
    from skebrm.serving.cli import build_parser

    args = build_parser().parse_args(["--model", "m", "--score-chunk-size", "4"])
    assert args.score_chunk_size == 4
    assert build_parser().parse_args(["--model", "m"]).score_chunk_size is None

"""skebrm-serve as a real process on localhost, talked to with a real HTTP client.

The server runs with ``pickle`` and ``torch.load`` replaced by functions that raise, so
every test here also shows that nothing on the serving path (loading the bundle,
answering requests) unpickles.

The bundle's tiny RM runs in float64: the RM's batches then change its embeddings only at
the 1e-16 level, below the float32 that the calibrator computes in, so a text's numbers do
not depend on which other requests share its micro-batch, and every answer must equal
``RefinedRewardModel.score`` exactly, also under concurrent load. (With a float32 RM the
embeddings change in their last bits with the batch's padding and size, and the
refinement's accept/reject ascent can amplify that; benchmarks/README.md measures it.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import openrlhf_payload_old, openrlhf_payload_today  # noqa: E402

from skebrm import RefinedRewardModel  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LIMITS = {
    "--max-texts-per-request": "8",
    "--max-chars-per-text": "3000",
    "--max-request-bytes": "60000",
    "--max-batch-size": "16",
    "--max-wait-ms": "20",
}
NO_PICKLE = (
    "import pickle, sys, torch\n"
    "def _refuse(*a, **k):\n"
    "    raise RuntimeError('unpickling on the serving path')\n"
    "class _Refuse:\n"
    "    def __init__(self, *a, **k):\n"
    "        _refuse()\n"
    "pickle.load = pickle.loads = torch.load = _refuse\n"
    "pickle.Unpickler = _Refuse\n"
    "from skebrm.serving.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, log_path: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        args = ["--model", str(model_dir), "--port", str(self.port), *extra]
        self._log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NO_PICKLE, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited: {log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start: {log_path.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def saved(tiny_bundle_parts, tmp_path_factory):
    import copy

    parts = tiny_bundle_parts
    bundle = RefinedRewardModel(
        copy.deepcopy(parts.model),  # the bundle casts it to float64 in place
        parts.tokenizer,
        parts.calibrator,
        max_length=parts.max_length,
        dtype="float64",
        penalty=0.5,
    )
    folder = bundle.save_pretrained(tmp_path_factory.mktemp("bundle") / "ebrm")
    return folder, RefinedRewardModel.from_pretrained(folder)


POLICY_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def policy_tokenizer(tmp_path_factory):
    """A tiny byte-level policy tokenizer (pad <pad>, eos </s>, BOS <s>), saved to a folder."""
    from conftest import extraction_make_tokenizer

    tok = extraction_make_tokenizer(POLICY_TEMPLATE)
    folder = tmp_path_factory.mktemp("policy")
    tok.save_pretrained(folder)
    return tok, folder


@pytest.fixture(scope="module")
def server(saved, policy_tokenizer, tmp_path_factory):
    folder, _ = saved
    extra = [x for kv in LIMITS.items() for x in kv]
    extra += ["--policy-tokenizer", str(policy_tokenizer[1]), "--strip-token", "<|im_end|>"]
    srv = Server(folder, tmp_path_factory.mktemp("log") / "server.log", *extra)
    yield srv
    srv.stop()


def _post(server, payload, client=httpx):
    return client.post(f"{server.url}/get_reward", json=payload, timeout=60)


def _rows(pairs, start, n):
    chunk = pairs[start : start + n]
    return [p["prompt"][-400:] for p in chunk], [" " + p["chosen"][:400] for p in chunk]


def _check(resp, ref, penalty=0.5):
    """The answer equals ``ref`` (a RewardScores) exactly: JSON floats round-trip."""
    assert resp.status_code == 200, resp.text
    got = resp.json()
    np.testing.assert_array_equal(got["scores"], ref.refined_reward)
    np.testing.assert_array_equal(got["extra_logs"]["reward_std"], ref.std)
    np.testing.assert_array_equal(got["extra_logs"]["base_reward"], ref.base_reward)
    np.testing.assert_array_equal(got["rewards"], ref.refined_reward - penalty * ref.std)


def test_health(server):
    got = httpx.get(f"{server.url}/health", timeout=10)
    assert got.status_code == 200
    body = got.json()
    assert body["status"] == "ok" and body["penalty"] == 0.5
    assert body["limits"]["max_texts_per_request"] == 8


def test_contract_and_numbers_equal_score(server, saved, tiny_bundle_parts):
    _, bundle = saved
    prompts, responses = _rows(tiny_bundle_parts.pairs, 0, 5)
    payload = {
        "query": [p + r for p, r in zip(prompts, responses)],
        "prompts": prompts,
        "labels": ["a", None, 3, "b", "c"],
    }
    resp = _post(server, payload)
    body = resp.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert set(body["extra_logs"]) == {"reward_std", "base_reward"}
    assert all(len(v) == 5 for v in (body["rewards"], body["scores"], *body["extra_logs"].values()))
    _check(resp, bundle.score(prompts, responses))
    # without prompts, each query is a response to an empty prompt
    resp = _post(server, {"query": payload["query"][:2]})
    _check(resp, bundle.score(["", ""], payload["query"][:2]))


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b'{"queries": ["a"]}', 422, "'query' is required"),
    (b'{"query": "abc"}', 422, "'query' must be a list, got str"),
    (b'{"query": []}', 422, "'query' is empty"),
    (b'{"query": ["a", 1]}', 422, r"'query'\[1\] must be a string"),
    (b'{"query": [null]}', 422, r"'query'\[0\] must be a string, got a JSON null"),
    (json.dumps({"query": ["a"] * 9}).encode(), 413, "9 texts, above .* limit of 8"),
    (json.dumps({"query": ["x" * 3001]}).encode(), 413, "3001 characters, above"),
    (json.dumps({"query": ["y" * 2900] * 8 * 3}).encode(), 413, "request body is"),
    (b'{"query": ["ab"], "prompts": ["a", "b"]}', 422, "'prompts' has 2 entries"),
    (b'{"query": ["ab"], "prompts": ["x"]}', 422, "does not start with 'prompts'"),
    (b'{"query": ["ab"], "labels": [1, 2]}', 422, "'labels' has 2 entries"),
    (b'{"query": [" "]}', 422, "nothing to score"),
    (b'{"query": ' + b"[" * 20000 + b"]" * 20000 + b"}", 400, "nested too deeply"),
    (b'{"query": ["a"], "labels": [' + b"9" * 5000 + b"]}", 400, "too many digits"),
]


@pytest.mark.parametrize(("body", "status", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_a_4xx_json_error(server, body, status, match):
    import re

    resp = httpx.post(
        f"{server.url}/get_reward",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == status, resp.text
    assert re.search(match, resp.json()["detail"]), resp.json()


def test_start_up_log_names_the_tokens_stripped(server):
    line = next(x for x in server.log().splitlines() if "stripping" in x)
    assert "'[PAD]' (RM pad_token)" in line
    assert "'<pad>' (policy pad_token), '</s>' (policy eos_token), '<s>' (policy bos_token)" in line
    assert "'<|im_end|>' (--strip-token)" in line


def test_openrlhf_payloads_score_as_the_clean_texts(server, saved, policy_tokenizer):
    """Both shapes of OpenRLHF's queries score exactly as the prompt and response alone."""
    _, bundle = saved
    tok, _ = policy_tokenizer
    texts = [("How do I boil an egg?", " Simmer it for 9 minutes."), ("Hi", " Hello there!")]
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q, _ in texts
    ]
    clean = [p.removeprefix("<s>") for p in prompts]
    responses = [r for _, r in texts]
    payload = openrlhf_payload_today(tok, prompts[0], responses[0])
    assert payload["query"][0].endswith("minutes.</s>")
    _check(_post(server, payload), bundle.score(clean[:1], responses[:1]))
    payload = openrlhf_payload_old(tok, prompts, responses)
    assert payload["query"][1].startswith("<pad><pad>") and "<s><s><|user|>" in payload["query"][1]
    _check(_post(server, payload), bundle.score(clean, responses))
    # the policy's end-of-turn token given with --strip-token
    payload = {"query": [prompts[1] + " Hello there!<|im_end|>"], "prompts": [prompts[1]]}
    _check(_post(server, payload), bundle.score(clean[1:], responses[1:]))


def test_wrong_route_and_method_are_json_errors(server):
    assert httpx.get(f"{server.url}/get_reward", timeout=10).status_code == 405
    missing = httpx.get(f"{server.url}/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["detail"] == "Not Found"


def test_server_stays_up_and_bad_clients_do_not_disturb_good_ones(server, saved, tiny_bundle_parts):
    _, bundle = saved
    pairs = tiny_bundle_parts.pairs
    good = [_rows(pairs, i, 1 + i % 3) for i in range(12)]
    refs = [bundle.score(p, r) for p, r in good]
    bad = [b"{", b'{"query": []}', json.dumps({"query": ["z"] * 50}).encode()] * 4

    def send_good(i):
        p, r = good[i]
        return i, _post(server, {"query": [a + b for a, b in zip(p, r)], "prompts": p})

    def send_bad(body):
        return httpx.post(f"{server.url}/get_reward", content=body, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(send_good, i) for i in range(len(good))]
        bads = [pool.submit(send_bad, b) for b in bad]
        for f in goods:
            i, resp = f.result()
            _check(resp, refs[i])
        assert all(400 <= f.result() < 500 for f in bads)
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def test_load_200_requests_from_8_clients_all_correct(server, saved, tiny_bundle_parts):
    """Correctness under load; the timing is benchmarks/bench_serving.py's job."""
    _, bundle = saved
    pairs = tiny_bundle_parts.pairs
    pool = [_rows(pairs, (7 * k) % 38, 1 + k % 3) for k in range(24)]
    pool_refs = [bundle.score(p, r) for p, r in pool]
    requests = [pool[i % 24] for i in range(200)]
    refs = [pool_refs[i % 24] for i in range(200)]
    before = httpx.get(f"{server.url}/health", timeout=10).json()
    errors = []
    lock = threading.Lock()

    def client(ids):
        with httpx.Client(timeout=60) as c:
            for i in ids:
                p, r = requests[i]
                resp = _post(server, {"query": [a + b for a, b in zip(p, r)], "prompts": p}, c)
                try:
                    _check(resp, refs[i])
                except AssertionError as exc:
                    with lock:
                        errors.append((i, str(exc)[:200]))

    threads = [threading.Thread(target=client, args=(range(k, 200, 8),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    after = httpx.get(f"{server.url}/health", timeout=10).json()
    n_texts = sum(len(p) for p, _ in requests)
    assert after["texts"] - before["texts"] == n_texts
    assert after["batches"] - before["batches"] < 200  # concurrent requests shared batches
    assert after["pending_texts"] == 0


def test_clean_shutdown_answers_requests_in_flight(saved, tiny_bundle_parts, tmp_path):
    """SIGTERM while a request waits in the batcher: it is answered, then the server exits 0."""
    folder, _ = saved
    bundle = RefinedRewardModel.from_pretrained(folder)
    srv = Server(folder, tmp_path / "server.log", "--max-wait-ms", "1500")
    prompts, responses = _rows(tiny_bundle_parts.pairs, 0, 2)
    payload = {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(_post, srv, payload)
        deadline = time.monotonic() + 30
        while httpx.get(f"{srv.url}/health", timeout=5).json()["pending_texts"] < 2:
            assert time.monotonic() < deadline and not future.done()
            time.sleep(0.01)
        code = srv.stop(signal.SIGTERM)
        resp = future.result()
    assert code == 0, srv.log()[-2000:]
    _check(resp, bundle.score(prompts, responses))
    log = srv.log()
    assert "Application shutdown complete" in log and "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health", timeout=2)


def test_cli_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    from skebrm.serving.cli import build_parser, main

    assert build_parser().parse_args(["--model", "x"]).host == "127.0.0.1"
    assert build_parser().parse_args(["--model", "x"]).port == 5000
    assert main(["--model", str(tmp_path)]) == 2
    assert "is not a saved RefinedRewardModel" in capsys.readouterr().err

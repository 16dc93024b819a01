"""Benchmark EBRM fit and predict against the faithful reference implementation.

One run writes one JSON file, ``benchmarks/results/calibrator-<UTC timestamp>.json``,
and prints a table. Every ratio is library / reference measured in the same process
(memory: in fresh subprocesses of the same script), under the same torch threads.

    python benchmarks/bench_calibrator.py                 # full run, ~15 min on 2 cores
    python benchmarks/bench_calibrator.py --quick         # smoke run, about a minute
    python benchmarks/bench_calibrator.py --sections train,inference

Sections: ``peak`` (fp32 matmul peak, always run), ``train``, ``memory``,
``inference``, ``scaling``, ``mmap``, ``basis``. FLOPs are counted analytically
(2 per multiply-add; elementwise work not counted); see :func:`library_flops_per_row`
and ``reference.reference_flops_per_row``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import skebrm
from skebrm import EnergyRewardCalibrator, _training
from skebrm._objectives import GridNLL, NCEPlus
from skebrm._training import accumulate_gradients
from skebrm.energy import BasisEnergyNet, EnergyNet, Workspace

HERE = Path(__file__).resolve().parent


def _load_reference():
    spec = importlib.util.spec_from_file_location("ebrm_reference", HERE / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ebrm_reference"] = module
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

SIGMAS = torch.tensor([3.5])
BETA, PENALTY, LR, WD = 0.1, 0.05, 9e-5, 1e-2


# --------------------------------------------------------------------------- helpers
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def measure_peak_gflops(n: int = 4096, reps: int = 5) -> float:
    """Best fp32 ``n×n @ n×n`` matmul rate, GFLOP/s, in this process and thread setting."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def library_flops_per_row(
    n_features: int,
    n_candidates: int,
    *,
    reward_hidden=(16, 32, 64),
    hidden=(1024, 512),
) -> dict[str, float]:
    """FLOPs of one row for the library's factored ``EnergyNet``.

    Forward: the embedding part of the first layer once (``2·d·H``), then per candidate
    the reward branch, ``W_r·φ(r)`` (``2·64·H``) and the rest of the trunk. Training:
    candidates' work ×3 (forward + two backward products), the embedding ×2 (forward +
    weight gradient; the input needs no gradient).
    """
    branch, prev = 0, 1
    for width in reward_hidden:
        branch += 2 * prev * width
        prev = width
    widths = [*hidden, 1]
    per_candidate = branch + 2 * prev * hidden[0]
    per_candidate += sum(2 * a * b for a, b in itertools.pairwise(widths))
    embed = 2 * n_features * hidden[0]
    return {
        "forward": float(embed + n_candidates * per_candidate),
        "train": float(2 * embed + 3 * n_candidates * per_candidate),
    }


def basis_flops_per_row(
    n_features: int, n_candidates: int, *, hidden=(1024, 512), n_basis=64
) -> dict[str, float]:
    """FLOPs of one row for ``BasisEnergyNet``: the MLP ``g(e)`` once, then an inner
    product of length ``n_basis`` per candidate (the basis itself is elementwise)."""
    widths = [n_features, *hidden, n_basis]
    first = 2 * widths[0] * widths[1]
    rest = sum(2 * a * b for a, b in itertools.pairwise(widths[1:]))
    per_candidate = 2 * n_basis
    return {
        "forward": float(first + rest + n_candidates * per_candidate),
        "train": float(2 * first + 3 * rest + 3 * n_candidates * per_candidate),
    }


def _batch(d: int, rows: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g), 4 * torch.randn(rows, generator=g)


def _grid_nll(grid_size):
    """The grid-likelihood objective on a grid as wide as the calibrator's for these rewards."""
    low, high = -16.0, 16.0
    width = (high - low) / grid_size
    centres = low + (torch.arange(grid_size, dtype=torch.float32) + 0.5) * width
    return GridNLL((centres, low, width), SIGMAS, BETA, PENALTY)


def time_library_steps(net, d, batch, n_neg, steps, seed=0, objective=None):
    """Median seconds of one library training step (after one warm-up step); NCE+ with
    ``n_neg`` negatives unless another objective is given."""
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    x, y = _batch(d, batch, seed)
    g = torch.Generator().manual_seed(seed)
    objective = objective or NCEPlus(SIGMAS, BETA, n_neg, PENALTY)
    net.train()
    workspace = Workspace()  # reused across steps, as the training loop does
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        plan = objective.plan(y, generator=g)
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(net, x, plan, workspace=workspace)
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_reference_steps(net, d, batch, n_neg, steps, seed=0):
    """Median seconds of one reference step (after a warm-up step on 4 rows)."""
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    x, y = _batch(d, batch, seed)
    ref.reference_train_step(
        net, opt, x[:4], y[:4], sigmas=SIGMAS, beta=BETA, n_negatives=n_neg, penalty=PENALTY
    )
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        ref.reference_train_step(
            net, opt, x, y, sigmas=SIGMAS, beta=BETA, n_negatives=n_neg, penalty=PENALTY
        )
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# --------------------------------------------------------------------------- sections
def section_train(cfg, peak):
    rows = []
    for d in cfg["train_dims"]:
        torch.manual_seed(0)
        net = EnergyNet(d)
        t_lib = time_library_steps(net, d, cfg["batch"], cfg["n_neg"], cfg["lib_steps"])
        torch.manual_seed(0)
        net = EnergyNet(d)
        grid = _grid_nll(cfg["grid_size"])
        t_grid = time_library_steps(
            net, d, cfg["batch"], cfg["n_neg"], cfg["lib_steps"], objective=grid
        )
        torch.manual_seed(0)
        reference = ref.ReferenceEnergyNet(d)
        t_ref = time_reference_steps(reference, d, cfg["batch"], cfg["n_neg"], cfg["ref_steps"])
        k = cfg["n_neg"] + 1
        f_lib = library_flops_per_row(d, k)["train"]
        f_ref = ref.reference_flops_per_row(d, k)["train"]
        row = {
            "d": d,
            "batch": cfg["batch"],
            "n_negatives": cfg["n_neg"],
            "library_rows_per_s": cfg["batch"] / t_lib,
            "reference_rows_per_s": cfg["batch"] / t_ref,
            "library_step_s": t_lib,
            "reference_step_s": t_ref,
            "library_grid_nll_rows_per_s": cfg["batch"] / t_grid,
            "grid_nll_cells": cfg["grid_size"],
            "grid_nll_over_nce_plus": t_lib / t_grid,
            "grid_nll_over_reference": t_ref / t_grid,
            "library_flops_per_row": f_lib,
            "reference_flops_per_row": f_ref,
        }
        row["speedup"] = row["library_rows_per_s"] / row["reference_rows_per_s"]
        row["library_gflops"] = f_lib * row["library_rows_per_s"] / 1e9
        row["reference_gflops"] = f_ref * row["reference_rows_per_s"] / 1e9
        row["library_peak_fraction"] = row["library_gflops"] / peak
        row["reference_peak_fraction"] = row["reference_gflops"] / peak
        rows.append(row)
        print(
            f"  train d={d:5d}: library {row['library_rows_per_s']:7.2f} rows/s "
            f"({row['library_peak_fraction']:.0%} of peak), reference "
            f"{row['reference_rows_per_s']:6.2f} rows/s "
            f"({row['reference_peak_fraction']:.0%}), speedup {row['speedup']:.2f}x; grid NLL "
            f"({cfg['grid_size']} cells) {row['library_grid_nll_rows_per_s']:7.2f} rows/s = "
            f"{row['grid_nll_over_nce_plus']:.2f}x library NCE+, "
            f"{row['grid_nll_over_reference']:.2f}x the reference",
            flush=True,
        )
    return rows


def _memory_child(args) -> None:
    """Run in a fresh process: one training step; print peak RSS growth as JSON."""
    torch.manual_seed(0)
    d, batch, n_neg = args.dim, args.batch, args.n_negatives
    x, y = _batch(d, batch, 0)
    if args.memory_child == "reference":
        net = ref.ReferenceEnergyNet(d)
    elif args.memory_child == "basis":
        net = BasisEnergyNet(d)
    else:
        net = EnergyNet(d)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD)
    # Optimiser state is created lazily: create it before the baseline.
    for p in net.parameters():
        opt.state[p]["step"] = torch.tensor(0.0)
        opt.state[p]["exp_avg"] = torch.zeros_like(p)
        opt.state[p]["exp_avg_sq"] = torch.zeros_like(p)
        p.grad = torch.zeros_like(p)
    # Reset the kernel's peak-RSS counter (VmHWM), so the peak after the step is the
    # step's own; fall back to the growth of ru_maxrss where that is not allowed.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS before"
        base_kib = proc_status_kib("VmRSS")
    except OSError:
        method = "growth of getrusage ru_maxrss"
        base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if args.memory_child == "reference":
        ref.reference_train_step(
            net, opt, x, y, sigmas=SIGMAS, beta=BETA, n_negatives=n_neg, penalty=PENALTY
        )
    else:
        net.train()
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(net, x, NCEPlus(SIGMAS, BETA, n_neg, PENALTY).plan(y))
        opt.step()
    seconds = time.perf_counter() - t0
    if method.startswith("VmHWM"):
        peak_kib = proc_status_kib("VmHWM")
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "baseline_rss_mib": base_kib / 1024,
                "peak_rss_mib": peak_kib / 1024,
                "step_peak_mib": (peak_kib - base_kib) / 1024,
                "step_s": seconds,
                "method": method,
            }
        )
    )


def section_memory(cfg):
    out = {"d": cfg["memory_dim"], "batch": cfg["batch"], "n_negatives": cfg["n_neg"]}
    for impl in ("library", "reference", "basis"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            impl,
            "--dim",
            str(cfg["memory_dim"]),
            "--batch",
            str(cfg["batch"]),
            "--n-negatives",
            str(cfg["n_neg"]),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[impl] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  memory {impl:9s}: step peak {out[impl]['step_peak_mib']:8.0f} MiB", flush=True)
    out["library_over_reference"] = (
        out["library"]["step_peak_mib"] / out["reference"]["step_peak_mib"]
    )
    return out


def _synthetic(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
    y = X @ w + 0.3 * rng.standard_normal(n).astype(np.float32)
    return X, y.astype(np.float64)


def _timed(fn, reps=1):
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def section_inference(cfg):
    d, n = cfg["inference_dim"], cfg["inference_rows"]
    reps = cfg["inference_reps"]  # best of: steady-state throughput, same for both sides
    X_fit, y_fit = _synthetic(cfg["inference_fit_rows"], d, 1)
    cal = EnergyRewardCalibrator(
        n_negatives=16, max_epochs=1, batch_size=256, random_state=0, device="cpu"
    ).fit(X_fit, y_fit)
    X, y = _synthetic(n, d, 2)
    cal.predict(X[:8], base_reward=y[:8])  # warm-up
    t_hybrid, r_lib = _timed(lambda: cal.predict(X, base_reward=y), reps)
    t_global, _ = _timed(lambda: cal.predict(X), reps)

    def full_distribution():
        # the public one-pass method: global mode (grid + ascent), mean, std, quantiles
        d = cal.predict_distribution(X)
        return d.mode, d.mean(), d.std(), d.quantiles([0.05, 0.5, 0.95])

    t_full, _ = _timed(full_distribution, reps)

    def public_distribution():
        cal.predict(X)
        cal.predict_mean(X)
        cal.score_uncertainty(X)
        cal.predict_quantiles(X, [0.05, 0.5, 0.95])

    t_public, _ = _timed(public_distribution, reps)

    # the same with inference_dtype="float64" (the default is float32)
    cal.set_params(inference_dtype="float64")
    cal.predict(X[:8], base_reward=y[:8])  # warm-up
    t_hybrid64, _ = _timed(lambda: cal.predict(X, base_reward=y), reps)
    t_full64, _ = _timed(full_distribution, reps)
    cal.set_params(inference_dtype="float32")

    reference = ref.ReferenceEnergyNet.from_energy_net(cal.module_).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    e = torch.from_numpy(X)
    scaler = cal.posterior_.scaler
    base_s = torch.as_tensor(scaler.transform(y), dtype=torch.float32)
    ref.reference_ascent(reference, e[:8], base_s[:8])  # warm-up
    t_ref, r_ref_s = _timed(
        lambda: ref.reference_ascent(reference, e, base_s, n_steps=50, step_size=0.5, shrink=0.2),
        reps,
    )
    r_ref = scaler.inverse_transform(r_ref_s.double().numpy())
    diff = np.abs(r_lib - r_ref) / cal.reward_scale_
    out = {
        "d": d,
        "rows": n,
        "grid_size": cal.grid_size,
        "library_dtype": str(next(cal.posterior_.net(cal._settings())[0].parameters()).dtype),
        "reference_dtype": "torch.float32",
        "library_hybrid_rows_per_s": n / t_hybrid,
        "reference_ascent_T50_rows_per_s": n / t_ref,
        "hybrid_speedup": t_ref / t_hybrid,
        "library_global_mode_rows_per_s": n / t_global,
        "library_full_distribution_one_grid_pass_rows_per_s": n / t_full,
        "full_distribution_over_reference_T50": t_full / t_ref,
        "library_public_api_distribution_rows_per_s": n / t_public,
        "public_api_distribution_over_reference_T50": t_public / t_ref,
        "library_float64_hybrid_rows_per_s": n / t_hybrid64,
        "hybrid_speedup_float64": t_ref / t_hybrid64,
        "full_distribution_float64_over_reference_T50": t_full64 / t_ref,
        "library_vs_reference_mode_median_abs_diff_std_units": float(np.median(diff)),
        "library_vs_reference_mode_frac_within_1e-3_std_units": float(np.mean(diff < 1e-3)),
    }
    print(
        f"  inference d={d}: hybrid {out['library_hybrid_rows_per_s']:.0f} rows/s vs "
        f"reference T=50 {out['reference_ascent_T50_rows_per_s']:.0f} rows/s "
        f"({out['hybrid_speedup']:.2f}x); global mode {out['library_global_mode_rows_per_s']:.0f}"
        f"; full distribution (one grid pass) {out['library_full_distribution_one_grid_pass_rows_per_s']:.0f}"
        f" rows/s = {out['full_distribution_over_reference_T50']:.2f}x the reference's time"
        f"; float64: hybrid {out['hybrid_speedup_float64']:.2f}x, full distribution "
        f"{out['full_distribution_float64_over_reference_T50']:.2f}x the reference's time",
        flush=True,
    )
    return out


def _one_epoch_calibrator(cfg, energy: str) -> EnergyRewardCalibrator:
    """The scaling and memory-mapped sections' estimator: one epoch, the run's M and batch."""
    return EnergyRewardCalibrator(
        energy=energy,
        n_negatives=cfg["n_neg"],
        max_epochs=1,
        batch_size=cfg["batch"],
        random_state=0,
        device="cpu",
    )


def section_scaling(cfg):
    d = cfg["scaling_dim"]
    rows = []
    for n in cfg["scaling_rows"]:
        X, y = _synthetic(n, d, 3)
        cal = _one_epoch_calibrator(cfg, cfg["scaling_energy"])
        t_fit, _ = _timed(lambda cal=cal, X=X, y=y: cal.fit(X, y))
        t_pred, _ = _timed(lambda cal=cal, X=X, y=y: cal.predict(X, base_reward=y))
        rows.append(
            {
                "n": n,
                "d": d,
                "energy": cfg["scaling_energy"],
                "fit_s": t_fit,
                "predict_hybrid_s": t_pred,
                "fit_us_per_row": 1e6 * t_fit / n,
                "predict_us_per_row": 1e6 * t_pred / n,
            }
        )
        print(
            f"  scaling n={n:7d}: fit {t_fit:7.1f} s ({rows[-1]['fit_us_per_row']:.0f} µs/row), "
            f"predict {t_pred:6.1f} s ({rows[-1]['predict_us_per_row']:.0f} µs/row)",
            flush=True,
        )
        del X, y, cal
    return rows


class _RssSampler(threading.Thread):
    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.peak_anon = self.peak_file = 0

    def run(self):
        while not self.stop.is_set():
            self.peak_anon = max(self.peak_anon, proc_status_kib("RssAnon"))
            self.peak_file = max(self.peak_file, proc_status_kib("RssFile"))
            time.sleep(self.interval)


def section_mmap(cfg):
    n, d = cfg["mmap_rows"], cfg["mmap_dim"]
    max_rows = cfg["mmap_max_rows"]
    tmpdir = Path(cfg["mmap_dir"])
    fd, name = tempfile.mkstemp(prefix="skebrm-bench-", suffix=".f16", dir=tmpdir)
    os.close(fd)
    path = Path(name)
    try:
        t0 = time.perf_counter()
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
        rng = np.random.default_rng(4)
        block = rng.standard_normal((8192, d), dtype=np.float32).astype(np.float16)
        for i, start in enumerate(range(0, n, block.shape[0])):
            stop = min(n, start + block.shape[0])
            X[start:stop] = np.roll(block, i, axis=1)[: stop - start]
        X.flush()
        del X
        t_write = time.perf_counter() - t0
        w = rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
        X = np.load(path, mmap_mode="r")
        y = np.empty(n)
        for start in range(0, n, 65536):
            y[start : start + 65536] = X[start : start + 65536].astype(np.float32) @ w
        y += 0.3 * rng.standard_normal(n)
        anon_before = proc_status_kib("RssAnon")
        sampler = _RssSampler()
        sampler.start()
        n_batches = max(1, max_rows // cfg["batch"])
        original = _training.TrainingData.batches

        def capped(self, batch_size, generator):
            # The permutation spans all n rows of the file; only the first batches run.
            for i, batch in enumerate(original(self, batch_size, generator)):
                if i >= n_batches:
                    return
                yield batch

        cal = _one_epoch_calibrator(cfg, cfg["mmap_energy"])
        t0 = time.perf_counter()
        with mock.patch.object(_training.TrainingData, "batches", capped):
            cal.fit(X, y)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        cal.predict(X[:10000], base_reward=y[:10000])
        t_pred = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        out = {
            "rows": n,
            "d": d,
            "dtype": "float16",
            "file_gib": path.stat().st_size / 2**30,
            "energy": cfg["mmap_energy"],
            "rows_trained": n_batches * cfg["batch"],
            "write_s": t_write,
            "fit_s": t_fit,
            "predict_10k_hybrid_s": t_pred,
            "rss_anon_before_mib": anon_before / 1024,
            "peak_rss_anon_mib": sampler.peak_anon / 1024,
            "peak_rss_file_mib": sampler.peak_file / 1024,
            "vm_hwm_mib": proc_status_kib("VmHWM") / 1024,
        }
        print(
            f"  mmap {n}x{d} float16 ({out['file_gib']:.1f} GiB): fit ({out['rows_trained']} "
            f"rows trained) {t_fit:.1f} s; private (anon) RSS peak "
            f"{out['peak_rss_anon_mib']:.0f} MiB (before {out['rss_anon_before_mib']:.0f}); "
            f"file-backed RSS peak {out['peak_rss_file_mib']:.0f} MiB",
            flush=True,
        )
        return out
    finally:
        path.unlink(missing_ok=True)


def section_basis(cfg, peak, train_rows):
    ref_rate = {row["d"]: row["reference_rows_per_s"] for row in train_rows}
    rows = []
    for d in cfg["basis_dims"]:
        torch.manual_seed(0)
        net = BasisEnergyNet(d)
        t = time_library_steps(net, d, cfg["batch"], cfg["n_neg"], cfg["basis_steps"])
        f = basis_flops_per_row(d, cfg["n_neg"] + 1)["train"]
        row = {
            "d": d,
            "batch": cfg["batch"],
            "n_negatives": cfg["n_neg"],
            "basis_rows_per_s": cfg["batch"] / t,
            "basis_flops_per_row": f,
        }
        row["basis_gflops"] = f * row["basis_rows_per_s"] / 1e9
        row["basis_peak_fraction"] = row["basis_gflops"] / peak
        if d in ref_rate:
            row["reference_rows_per_s"] = ref_rate[d]
            row["speedup_vs_reference"] = row["basis_rows_per_s"] / ref_rate[d]
        rows.append(row)
        print(
            f"  basis d={d:5d}: {row['basis_rows_per_s']:8.1f} rows/s"
            + (f", {row['speedup_vs_reference']:.0f}x the reference" if d in ref_rate else ""),
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------- main
def _write_json(result: dict, target: Path) -> None:
    """Write ``result`` to ``target`` atomically (temporary file, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".calibrator-", suffix=".json.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2, default=float)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FULL = dict(
    train_dims=[512, 2048, 4096],
    batch=256,
    n_neg=768,
    grid_size=512,
    lib_steps=3,
    ref_steps=1,
    memory_dim=4096,
    inference_dim=2048,
    inference_rows=256,
    inference_fit_rows=512,
    inference_reps=3,
    scaling_dim=512,
    scaling_rows=[10_000, 50_000, 160_000],
    scaling_energy="basis",
    mmap_rows=1_000_000,
    mmap_dim=4096,
    mmap_max_rows=10_240,
    mmap_energy="basis",
    mmap_dir="/tmp",
    basis_dims=[2048, 4096],
    basis_steps=3,
)
QUICK = dict(
    FULL,
    train_dims=[256, 512],
    batch=32,
    lib_steps=1,
    memory_dim=512,
    inference_dim=256,
    inference_rows=128,
    inference_fit_rows=256,
    inference_reps=1,
    scaling_dim=64,
    scaling_rows=[1_000, 2_000, 4_000],
    mmap_rows=20_000,
    mmap_dim=512,
    mmap_max_rows=1024,
    basis_dims=[512],
    basis_steps=1,
)
SECTIONS = ("train", "memory", "inference", "scaling", "mmap", "basis")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minute-long smoke run")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--memory-child", choices=["library", "reference", "basis"])
    parser.add_argument("--dim", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--n-negatives", type=int)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args)
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    cfg = QUICK if args.quick else FULL
    started = _dt.datetime.now(_dt.timezone.utc)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE.parent
    ).stdout.strip()
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_utc": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "git_commit": commit,
        "skebrm_version": skebrm.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "gpu": None,
        "config": cfg,
    }
    print(
        f"skebrm calibrator benchmark: torch {torch.__version__}, {meta['torch_threads']} "
        f"threads, {meta['cpu_model']}, load {meta['loadavg_start']}",
        flush=True,
    )
    result: dict = {"meta": meta}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / f"calibrator-{stamp}{'-quick' if args.quick else ''}.json"
    meta["complete"] = False
    peak = measure_peak_gflops()
    print(f"  fp32 matmul peak (4096^3, best of 5): {peak:.1f} GFLOP/s", flush=True)
    train_rows: list = []
    t_all = time.perf_counter()
    for section in sections:
        t0 = time.perf_counter()
        print(f"[{section}]", flush=True)
        if section == "train":
            train_rows = section_train(cfg, peak)
            result["train"] = train_rows
        elif section == "memory":
            result["memory"] = section_memory(cfg)
        elif section == "inference":
            result["inference"] = section_inference(cfg)
        elif section == "scaling":
            result["scaling"] = section_scaling(cfg)
        elif section == "mmap":
            result["mmap"] = section_mmap(cfg)
        elif section == "basis":
            result["basis"] = section_basis(cfg, peak, train_rows)
        meta.setdefault("section_seconds", {})[section] = time.perf_counter() - t0
        _write_json(result, target)  # after every section, so a cut-short run keeps them
    peak_end = measure_peak_gflops()
    meta["matmul_peak_gflops_start"] = peak
    meta["matmul_peak_gflops_end"] = peak_end
    # On a shared machine one measurement can land in a busy moment: fractions of peak
    # use the best of the two (the printed lines above used the first).
    best_peak = max(peak, peak_end)
    meta["peak_used_for_fractions_gflops"] = best_peak
    for row in result.get("train", []):
        for who in ("library", "reference"):
            row[f"{who}_peak_fraction"] = row[f"{who}_gflops"] / best_peak
    for row in result.get("basis", []):
        row["basis_peak_fraction"] = row["basis_gflops"] / best_peak
    meta["loadavg_end"] = os.getloadavg()
    meta["total_seconds"] = time.perf_counter() - t_all
    meta["complete"] = True
    _write_json(result, target)
    print(f"fp32 matmul peak at the end: {peak_end:.1f} GFLOP/s; load {meta['loadavg_end']}")
    print(f"wrote {target} ({meta['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

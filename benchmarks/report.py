"""Render a ``bench_calibrator.py`` result as the Markdown tables of benchmarks/README.md.

    python benchmarks/report.py benchmarks/results/calibrator-<stamp>.json
    python benchmarks/report.py benchmarks/results/calibrator-<stamp>.json \\
        --readme benchmarks/README.md     # replace the block between the markers

Targets are those of the benchmarks issue; a row says "met" or "not met" from the
figures in the file, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

START, END = "<!-- calibrator:start -->", "<!-- calibrator:end -->"
TRAIN_TARGETS = {2048: 4.5, 4096: 6.0}
PEAK_TARGET = 0.5


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(result: dict, name: str) -> str:
    meta = result["meta"]
    peak = meta["peak_used_for_fractions_gflops"]
    out = [
        f"Result `{name}`: `{meta['command']}`, started {meta['started_utc']}, commit "
        f"`{meta['git_commit'][:7]}`, torch {meta['torch_version']}, "
        f'{meta["torch_threads"]} torch threads, CPU "{meta["cpu_model"]}" '
        f"({meta['cpu_count']} cores), load average {meta['loadavg_start'][0]:.1f} at the "
        f"start and {meta['loadavg_end'][0]:.1f} at the end; fp32 matmul peak measured in "
        f"the same run {meta['matmul_peak_gflops_start']:.1f} GFLOP/s at the start and "
        f"{meta['matmul_peak_gflops_end']:.1f} at the end (fractions below use "
        f"{peak:.1f}). GPU: {meta['gpu'] or 'none lent to this task, so no GPU column'}.",
        "",
    ]
    if "train" in result:
        grid = "library_grid_nll_rows_per_s" in result["train"][0]
        out += [
            "Training step, batch 256, M = 768 (library: median of "
            f"{meta['config']['lib_steps']} steps after a warm-up; reference: "
            f"{meta['config']['ref_steps']} step)"
            + (
                f'; `objective="grid_nll"` on {result["train"][0]["grid_nll_cells"]} cells '
                "next to NCE+:"
                if grid
                else ":"
            ),
            "",
            "| d | library rows/s | reference rows/s | speedup (target) "
            "| GFLOP/row lib / ref | fraction of peak lib / ref (target ≥ 50 %) |"
            + (" grid NLL rows/s (vs library NCE+) |" if grid else ""),
            "|---|---|---|---|---|---|" + ("---|" if grid else ""),
        ]
        for row in result["train"]:
            target = TRAIN_TARGETS.get(row["d"])
            goal = f" (≥ {target}×: {_met(row['speedup'] >= target)})" if target is not None else ""
            frac = row["library_peak_fraction"]
            out.append(
                f"| {row['d']:,} | {row['library_rows_per_s']:.1f} "
                f"| {row['reference_rows_per_s']:.1f} | {row['speedup']:.2f}×{goal} "
                f"| {row['library_flops_per_row'] / 1e9:.2f} / "
                f"{row['reference_flops_per_row'] / 1e9:.1f} "
                f"| {frac:.0%} ({_met(frac >= PEAK_TARGET)}) / "
                f"{row['reference_peak_fraction']:.0%} |"
                + (
                    f" {row['library_grid_nll_rows_per_s']:.1f} "
                    f"({row['grid_nll_over_nce_plus']:.2f}×) |"
                    if grid
                    else ""
                )
            )
        out.append("")
    if "memory" in result:
        mem = result["memory"]
        ratio = mem["library_over_reference"]
        out += [
            f"Peak memory of one training step, d = {mem['d']:,}, batch {mem['batch']}, "
            f"M = {mem['n_negatives']} (fresh subprocess each; {mem['library']['method']}):",
            "",
            "| | step peak | vs reference (target ≤ 40 %) |",
            "|---|---|---|",
            f"| library (`EnergyNet`) | {mem['library']['step_peak_mib']:,.0f} MiB "
            f"| {ratio:.1%} ({_met(ratio <= 0.4)}) |",
            f"| reference | {mem['reference']['step_peak_mib']:,.0f} MiB | – |",
        ]
        if "basis" in mem:
            basis = mem["basis"]["step_peak_mib"]
            out.append(
                f"| `BasisEnergyNet` | {basis:,.0f} MiB "
                f"| {basis / mem['reference']['step_peak_mib']:.1%} |"
            )
        out.append("")
    if "inference" in result:
        inf = result["inference"]
        ref = inf["reference_ascent_T50_rows_per_s"]
        hyb, full = inf["hybrid_speedup"], inf["full_distribution_over_reference_T50"]
        out += [
            f"Inference, d = {inf['d']:,}, {inf['rows']} rows, grid {inf['grid_size']}, best "
            f"of {meta['config'].get('inference_reps', 1)} (library {inf['library_dtype']}, "
            f"the default; reference {inf['reference_dtype']}):",
            "",
            "| | rows/s | vs the reference's T = 50 ascent |",
            "|---|---|---|",
            f"| reference, Alg. 1 T = 50 from the base reward | {ref:.0f} | 1× |",
            f"| hybrid refinement `predict(X, base_reward=y)` "
            f"| {inf['library_hybrid_rows_per_s']:.0f} "
            f"| {hyb:.2f}× faster (≥ 4×: {_met(hyb >= 4)}) |",
            f'| same with `inference_dtype="float64"` '
            f"| {inf['library_float64_hybrid_rows_per_s']:.0f} "
            f"| {inf['hybrid_speedup_float64']:.2f}× faster |",
            f"| global mode `predict(X)` (grid + ascent) "
            f"| {inf['library_global_mode_rows_per_s']:.0f} "
            f"| {ref / inf['library_global_mode_rows_per_s']:.2f}× the time |",
            f"| full distribution `predict_distribution` (mode, mean, std, 3 quantiles) "
            f"| {inf['library_full_distribution_one_grid_pass_rows_per_s']:.0f} "
            f"| {full:.2f}× the time (≤ 1×: {_met(full <= 1)}) |",
            f'| same with `inference_dtype="float64"` | – '
            f"| {inf['full_distribution_float64_over_reference_T50']:.2f}× the time |",
            f"| the four single methods (`predict`, `predict_mean`, `score_uncertainty`, "
            f"`predict_quantiles`) | {inf['library_public_api_distribution_rows_per_s']:.0f} "
            f"| {inf['public_api_distribution_over_reference_T50']:.2f}× the time |",
            "",
            "Library and reference modes from the same base rewards: median difference "
            f"{inf['library_vs_reference_mode_median_abs_diff_std_units']:.1e} standardised "
            f"units, {inf['library_vs_reference_mode_frac_within_1e-3_std_units']:.0%} within "
            "1e-3.",
            "",
        ]
    if "scaling" in result:
        rows = result["scaling"]
        out += [
            f'Scaling (`energy="{rows[0]["energy"]}"`, d = {rows[0]["d"]}, M = 768, batch '
            "256, 1 epoch; predict = hybrid refinement of all n rows):",
            "",
            "| n | fit s | fit µs/row | predict s | predict µs/row |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            out.append(
                f"| {row['n']:,} | {row['fit_s']:.1f} | {row['fit_us_per_row']:.0f} "
                f"| {row['predict_hybrid_s']:.1f} | {row['predict_us_per_row']:.0f} |"
            )
        out.append("")
    if "mmap" in result:
        mm = result["mmap"]
        out += [
            f"Memory-mapped fit: a {mm['rows']:,} × {mm['d']:,} {mm['dtype']} `.npy` "
            f"({mm['file_gib']:.1f} GiB, written in {mm['write_s']:.0f} s), "
            f'`energy="{mm["energy"]}"`, trained on {mm["rows_trained"]:,} rows drawn from '
            f"all {mm['rows']:,}: fit {mm['fit_s']:.1f} s, `predict` on 10k rows "
            f"{mm['predict_10k_hybrid_s']:.1f} s; private (anonymous) RSS "
            f"{mm['rss_anon_before_mib']:,.0f} MiB before, peak {mm['peak_rss_anon_mib']:,.0f} "
            f"MiB; file-backed RSS peak {mm['peak_rss_file_mib']:,.0f} MiB (page cache the "
            "kernel can drop: the input checks read every page once).",
            "",
        ]
    if "basis" in result:
        out += [
            "Cheap-reward energy (`BasisEnergyNet`), training step, batch 256, M = 768:",
            "",
            "| d | rows/s | vs reference (target ≥ 50×) | MFLOP/row |",
            "|---|---|---|---|",
        ]
        for row in result["basis"]:
            sp = row["speedup_vs_reference"]
            out.append(
                f"| {row['d']:,} | {row['basis_rows_per_s']:,.0f} | {sp:.0f}× "
                f"({_met(sp >= 50)}) | {row['basis_flops_per_row'] / 1e6:.1f} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _replace_block(readme: Path, block: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{block}{END}{tail}"
    fd, tmp = tempfile.mkstemp(dir=readme.parent, prefix=f".{readme.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(new)
        os.replace(tmp, readme)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path)
    ap.add_argument("--readme", type=Path, default=None)
    args = ap.parse_args(argv)
    block = render(json.loads(args.result.read_text()), args.result.name)
    if args.readme is None:
        print(block, end="")
    else:
        _replace_block(args.readme, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

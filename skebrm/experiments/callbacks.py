"""Hydra callbacks: after a multirun, one summary table over all of its jobs."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from skebrm.experiments.report import load_runs, summary_table, write_text

__all__ = ["MultirunSummary"]


class MultirunSummary(Callback):
    """Write ``summary.md`` (one row per job, test split and each OOD set) in the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # the preference-accuracy runs (the over-optimisation study writes no test split)
        runs = [(path, r) for path, r in load_runs(sweep_dir) if "test" in r]
        if not runs:
            return
        parts = ["# Multirun summary", "", "## Test split", "", summary_table(runs)]
        ood_names = sorted({n for _, r in runs for n in r.get("ood", {})})
        for name in ood_names:
            parts += ["", f"## Out of distribution: {name}", "", summary_table(runs, split=name)]
        path = write_text("\n".join(parts) + "\n", sweep_dir / "summary.md")
        print(f"summary of {len(runs)} runs: {path}")

"""Entry point of ``skebrm-experiment``: compose ``conf/`` with Hydra and run the pipeline.

Examples
--------
The default main job (MiniLM + the bundled HH-RLHF harmless sample, fully offline)::

    skebrm-experiment

A study, as a Hydra multirun (its sweep is declared in ``conf/experiment/``)::

    skebrm-experiment -m experiment=label_noise

The best-of-n over-optimisation study (``task: overoptimization`` in its config)::

    skebrm-experiment experiment=overoptimization

GRPO against one proxy, tracked by the gold RM (resumes when run again)::

    skebrm-experiment experiment=rl_overoptimization rl.proxy=ebrm_minus_1std
"""

from __future__ import annotations

import math
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.pipeline import run_experiment

__all__ = ["main"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
register_resolvers()


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run one job; returns the EBRM test accuracy, or for the over-optimisation study
    EBRM's peak best-of-n gold reward, for the RL study the run's peak gold reward (NaN
    for a dry run; for Hydra sweepers that optimise)."""
    output_dir = HydraConfig.get().runtime.output_dir
    if cfg.get("task") == "overoptimization":
        from skebrm.experiments.overoptimization import run_overoptimization

        results = run_overoptimization(cfg, output_dir)
        return float(results["summary"]["ebrm"]["peak_gold"])
    if cfg.get("task") == "rl_overoptimization":
        from skebrm.experiments.rl import run_rl_overoptimization

        results = run_rl_overoptimization(cfg, output_dir)
        return float(results["summary"]["peak_gold"]) if "summary" in results else math.nan
    results = run_experiment(cfg, output_dir)
    return float(results["test"]["methods"]["ebrm"]["accuracy"])


if __name__ == "__main__":
    main()

"""How far the paper's hybrid ascent (step 0.5, T = 50) is from converged on a real RM.

Fits a calibrator on the RMB study's calibration split (frozen MiniLM + Bradley–Terry
head, the cached embeddings of ``skebrm-experiment experiment=rmb_study
data.loader.n=2000``), then runs the accept/reject ascent from the base rewards of the
test split for 200 steps and reports how much rows still move after step 50.

    python scripts/ascent_convergence.py well_trained
    python scripts/ascent_convergence.py basis
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import skebrm.experiments.main  # noqa: F401  (registers the config's resolvers)
from skebrm._inference import ascend
from skebrm.experiments import conf_dir
from skebrm.experiments import pipeline as pl
from skebrm.experiments.data import split_pairs


def main(calibrator: str) -> None:
    overrides = ["experiment=rmb_study", "data.loader.n=2000", f"calibrator={calibrator}"]
    with initialize_config_dir(str(conf_dir()), version_base=None):
        cfg = compose("config", overrides=overrides)
    data = pl.load_data(cfg.data, cfg, progress=False)
    head, cal, test = split_pairs(data, list(cfg.split.fractions), random_state=int(cfg.seed))
    base = pl._base_model(cfg, head)
    est = pl.build(cfg.calibrator.estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(cal.embeddings, base(cal).reward, pair_id=cal.pair_id, chosen=cal.chosen)
    net, _ = est.posterior_.net(est._settings())
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        h = net.embed(torch.as_tensor(np.asarray(test.embeddings), dtype=dtype))
    r0 = torch.as_tensor(est.posterior_.scaler.transform(base(test).reward), dtype=dtype)
    kw = {"step_size": 0.5, "shrink": 0.2}
    r50, _ = ascend(net, h, r0, max_steps=50, **kw)
    r51, _ = ascend(net, h, r0, max_steps=51, **kw)
    r200, _ = ascend(net, h, r0, max_steps=200, **kw)
    moving = float(((r51 - r50).abs() > 1e-4).double().mean())
    far = float(((r200 - r50).abs() > 0.1).double().mean())
    print(
        f"calibrator={calibrator}: {len(r0)} test rows (standardised units, reward sd 4); "
        f"median |r50 − r0| {float((r50 - r0).abs().median()):.3f}; "
        f"rows still moving at step 51 (> 1e-4): {moving:.0%}; "
        f"median |r200 − r50| {float((r200 - r50).abs().median()):.3f}; "
        f"rows with |r200 − r50| > 0.1: {far:.0%}"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "well_trained")

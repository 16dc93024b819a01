"""Fill the policy-sample cache of the over-optimisation study, resumably, in the background.

Takes the same overrides as ``skebrm-experiment experiment=overoptimization`` and samples
exactly what the run would sample (evaluation prompts first, then training prompts),
through the same cache, so the run afterwards finds it warm. The cache is written in
atomic shards: a killed run picks up at the first missing shard, and a cache written with
other settings is refused.

    nohup python scripts/sample_policy.py experiment=overoptimization \\
        > sample_policy.log 2>&1 &
    python scripts/sample_policy.py experiment=overoptimization sampler=llama_cpp
"""

from __future__ import annotations

import os
import sys
import time

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.bon_data import policy_samples
from skebrm.experiments.overoptimization import build_context


def main(argv: list[str]) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register_resolvers()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=overoptimization", *argv])
    if cfg.bon_data.name != "policy":
        raise SystemExit(f"sample_policy: bon_data={cfg.bon_data.name} draws no policy samples.")
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
    context = build_context(cfg, progress=bool(cfg.progress))
    source = instantiate(cfg.bon_data.source, _convert_="all")
    start = time.perf_counter()
    out = policy_samples(context, **source.keywords)
    seconds = time.perf_counter() - start
    for part, (prompts, texts, n_tokens, finished, folder) in out.items():
        print(
            f"{part}: {len(prompts)} prompts x {texts.shape[1]} samples, mean "
            f"{n_tokens.mean():.1f} tokens, {finished.mean():.0%} stopped, cache {folder}",
            flush=True,
        )
    print(f"{seconds:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

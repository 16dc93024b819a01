"""Fill the embedding caches of an experiment (its data and out-of-distribution sets).

Takes the same overrides as ``skebrm-experiment`` and embeds every data set the run would
embed, through the same cache, so the run afterwards finds them warm. Resumable: the
cache is written in atomic shards, and a killed run picks up at the first missing shard.

    python scripts/build_caches.py experiment=rmb_full backbone=minilm
    nohup python scripts/build_caches.py experiment=rmb_full backbone=smollm2 > smol.log &
"""

from __future__ import annotations

import sys
import time

from hydra import compose, initialize_config_dir

from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.pipeline import load_data


def main(argv: list[str]) -> None:
    register_resolvers()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=argv)
    if cfg.torch_threads is not None:
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
    sets = [(cfg.data.name, cfg.data), *((name, node) for name, node in (cfg.ood or {}).items())]
    for name, node in sets:
        start = time.perf_counter()
        data = load_data(node, cfg, progress=bool(cfg.progress))
        seconds = time.perf_counter() - start
        print(
            f"{cfg.backbone.name} / {name}: {data.n_pairs} pairs ({2 * data.n_pairs} texts), "
            f"{data.embeddings.shape[1]}-d, {seconds:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

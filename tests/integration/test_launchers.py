"""Scale-out launchers: the recipes of docs/cluster.md and the launcher configs in conf/.

The extraction job and its config are taken from docs/cluster.md itself, so the page
cannot drift from what runs: every fenced ``python extract_job.py -m ...`` command there
is composed with the real launcher plugins, and the submitit one runs for real on
submitit's local executor over two shards of a tiny saved reward model.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "cluster.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _job_files(folder: Path) -> Path:
    """Write the page's extract_job.py and conf/extract.yaml into ``folder``."""
    (job,) = [b for b in _blocks("python") if b.startswith("# extract_job.py")]
    (conf,) = [b for b in _blocks("yaml") if b.startswith("# conf/extract.yaml")]
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "extract_job.py").write_text(job)
    (folder / "conf" / "extract.yaml").write_text(conf)
    return folder / "extract_job.py"


def _commands(prefix: str) -> list[list[str]]:
    """Argument lists of the page's bash commands that start with ``prefix``."""
    out = []
    for block in _blocks("bash"):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip().startswith(prefix):
                out.append(shlex.split(cmd)[len(shlex.split(prefix)) :])
    return out


def _doc_command(launcher: str) -> list[str]:
    (args,) = [
        a for a in _commands("python extract_job.py -m") if f"hydra/launcher={launcher}" in a
    ]
    return args


def _jobs(overrides: list[str]) -> list[list[str]]:
    """The sweep's jobs, as Hydra's basic sweeper expands it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return batch


def _compose(conf_dir: Path, name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return compose(name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("launcher", "target", "n_jobs"),
    [
        ("joblib", "JoblibLauncher", 2),
        ("submitit_slurm", "SlurmLauncher", 64),
        ("submitit_local", "LocalLauncher", 2),
    ],
)
def test_doc_recipes_compose_with_the_real_plugins(tmp_path, launcher, target, n_jobs):
    _job_files(tmp_path)
    jobs = _jobs(_doc_command(launcher))
    assert len(jobs) == n_jobs
    shards = []
    for overrides in (jobs[0], jobs[-1]):
        cfg = _compose(tmp_path / "conf", "extract", overrides)
        assert cfg.hydra.launcher._target_.endswith(target)
        assert cfg.num_shards == n_jobs
        shards.append(cfg.shard_index)
        instantiate(cfg.hydra.launcher)
    assert shards == [0, n_jobs - 1]
    if launcher == "submitit_slurm":
        assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.device == "cuda"


def test_ray_recipe_composes(tmp_path):
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher",
        reason="hydra-ray-launcher is not installed (it pins cloudpickle<3; see docs/cluster.md)",
    )
    _job_files(tmp_path)
    jobs = _jobs(_doc_command("ray"))
    assert len(jobs) == 16
    cfg = _compose(tmp_path / "conf", "extract", jobs[-1])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("RayLauncher")
    assert launcher.ray.init.address == "auto"
    assert launcher.ray.remote == {"num_gpus": 1, "num_cpus": 8}
    assert cfg.shard_index == 15 and cfg.device == "cuda"
    assert type(instantiate(launcher)).__name__ == "RayLauncher"
    # the experiments' own Ray launcher config
    from skebrm.experiments import conf_dir, register_resolvers

    register_resolvers()
    exp = _compose(conf_dir(), "config", ["hydra/launcher=ray_cluster"])
    assert exp.hydra.launcher._target_.endswith("RayLauncher")
    assert exp.hydra.launcher.ray.init.address == "auto"


@pytest.mark.parametrize(
    ("name", "target"), [("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher")]
)
def test_experiment_launcher_configs_compose(name, target):
    from skebrm.experiments import conf_dir, register_resolvers

    register_resolvers()
    cfg = _compose(conf_dir(), "config", [f"hydra/launcher={name}"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith(target)
    assert launcher.timeout_min > 0 and launcher.tasks_per_node == 1
    if name == "slurm":
        assert launcher.gpus_per_node == 1 and launcher.array_parallelism == 16
    assert type(instantiate(launcher)).__name__ == target
    for args in _commands("skebrm-experiment -m"):
        if f"hydra/launcher={name}" in args:
            overrides = [a for a in args if not a.startswith("hydra/launcher=")]
            for job in _jobs([f"hydra/launcher={name}", *overrides]):
                assert _compose(conf_dir(), "config", job).hydra.launcher._target_.endswith(target)


def _tiny_rm(folder: Path) -> Path:
    from skebrm.experiments.backbones import build_tiny_reward_model

    model, tok = build_tiny_reward_model("bert", initializer_range=0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_submitit_local_executor_runs_the_extraction_shards(tmp_path):
    from skebrm.datasets import _BUNDLED, load_pairs
    from skebrm.extraction import EmbeddingExtractor, load_cache

    script = _job_files(tmp_path / "job")
    rm = _tiny_rm(tmp_path / "rm")
    data = REPO / "skebrm" / "datasets" / "data" / _BUNDLED
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    args = [a for a in _doc_command("submitit_local") if not a.startswith("model.path=")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        str(script),
        "-m",
        *args,
        f"model.path={rm}",
        f"data.path={data}",
        "data.n=6",
        "max_length=32",
        "batch_size=4",
        f"cache_dir={cache}",
        "shard_size=2",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # two jobs ran through submitit
    text = " ".join(p.read_text() for p in logs)
    # the two jobs split the six shards between them
    assert "shard 0/2: computed [0, 2, 4]" in text and "shard 1/2: computed [1, 3, 5]" in text
    res = load_cache(cache)
    pairs = load_pairs(data, n=6, random_state=0)
    ref = EmbeddingExtractor(str(rm), max_length=32, batch_size=4).extract(pairs)
    np.testing.assert_allclose(res.embeddings, ref.embeddings, atol=1e-5)
    np.testing.assert_allclose(res.rewards, ref.rewards, atol=1e-5)

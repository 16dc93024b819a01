"""Every config in conf/ composes against the real tree, and its objects instantiate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from skebrm import BradleyTerryHead, EnergyRewardCalibrator
from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.data import EmbeddedPairs

CONF = conf_dir()
GROUPS = (
    "backbone",
    "data",
    "calibrator",
    "baselines",
    "experiment",
    "sampler",
    "bon_data",
    "policy",
    "posthoc",
)
SHARED_DATA = Path(os.environ["SKEBRM_DATA_DIR"])  # set by conftest.py unless given
# model nodes that download from the hub or convert large files: the target is resolved,
# and the config's tiny random twin is built instead
HEAVY_MODELS = {"smollm2", "skywork_llama3_8b", "oasst_pythia", "oasst_deberta"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def _hydra():
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _targets(node, path=""):
    """(path, node) of every config node with a ``_target_``, outermost first."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
            return
        for key in node:
            yield from _targets(node[key], f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]")


def test_every_config_file_is_in_a_tested_group():
    files = {p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")}
    known = {"config.yaml", "hydra/launcher/joblib_local.yaml"}
    # the submitit and Ray launchers are tested in test_launchers.py
    known |= {f"hydra/launcher/{n}.yaml" for n in ("slurm", "slurm_local", "ray_cluster")}
    known |= {f"{g}/{o}.yaml" for g in GROUPS for o in _options(g)}
    assert files == known
    for group in GROUPS:
        assert _options(group), group


def test_group_options_are_the_documented_ones():
    assert set(_options("backbone")) >= {
        "minilm",
        "smollm2",
        "skywork_llama3_8b",
        "oasst_pythia",
        "oasst_deberta",
    }
    assert set(_options("data")) >= {
        "hh_rlhf_bundled",
        "rmb",
        "autoj",
        "pandalm",
        "ultrafeedback",
        "synthetic",
    }
    assert set(_options("calibrator")) >= {"paper", "well_trained", "basis"}
    assert set(_options("experiment")) >= {"default", "rmb_study", "label_noise", "cross_model"}


def test_default_composition_is_the_main_job():
    cfg = compose("config", return_hydra_config=True)
    assert cfg.backbone.name == "minilm"
    assert cfg.data.name == "hh_rlhf_bundled"
    assert cfg.calibrator.name == "basis"
    assert cfg.experiment_name == "default"
    assert cfg.base_reward == "head"
    assert list(cfg.split.fractions) == [0.6, 0.2, 0.2]
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2
    assert "summary" in cfg.hydra.callbacks


@pytest.mark.parametrize("option", _options("calibrator"))
def test_calibrator_configs_instantiate(option):
    cfg = compose("config", overrides=[f"calibrator={option}"])
    est = instantiate(cfg.calibrator.estimator, _convert_="all")
    assert isinstance(est, EnergyRewardCalibrator)
    assert cfg.calibrator.name == option
    # every option shares the paper's noise model (σ, β); well_trained uses fewer negatives
    assert est.sigmas == [3.5] and est.beta == 0.1
    assert est.n_negatives == (128 if option == "well_trained" else 768)
    assert est.random_state == cfg.seed
    if option == "well_trained":
        assert est.validation_fraction == 0.2 and est.max_epochs == 30
        assert est.n_iter_no_change == 5 and est.dropout == 0.1
    if option == "basis":
        assert est.energy == "basis"


@pytest.mark.parametrize("option", _options("baselines"))
def test_baseline_configs_instantiate(option):
    cfg = compose("config", overrides=[f"baselines={option}"])
    for name, node in cfg.baselines.items():
        assert node.fit_on in ("head", "calibrator"), name
        est = instantiate(node.estimator, _convert_="all")
        assert hasattr(est, "fit") and hasattr(est, "predict"), name
    assert isinstance(instantiate(cfg.head), BradleyTerryHead)


def _tiny_pairs():
    return [
        {
            "prompt": "How do I boil an egg?",
            "chosen": "Simmer it for 9 minutes.",
            "rejected": "No.",
        },
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "I will not."},
    ]


@pytest.mark.parametrize("option", _options("backbone"))
def test_backbone_configs_compose_and_their_tiny_twins_extract(option):
    from skebrm.extraction import EmbeddingExtractor

    cfg = compose("config", overrides=[f"backbone={option}"])
    bb = cfg.backbone
    assert bb.name == option
    assert bb.base_reward in ("head", "native")
    assert bb.max_length > 0 and bb.batch_size > 0
    assert callable(get_method(bb.model._target_))
    model, tokenizer = instantiate(bb.tiny, _convert_="all")
    res = EmbeddingExtractor(model, tokenizer, max_length=64).extract(_tiny_pairs())
    assert res.embeddings.shape == (4, model.config.hidden_size)
    assert np.isfinite(res.rewards).all()


def test_minilm_backbone_model_instantiates_offline():
    cfg = compose("config", overrides=["backbone=minilm"])
    model, tokenizer = instantiate(cfg.backbone.model, _convert_="all")
    assert model.config.num_labels == 1
    assert len(tokenizer) > 1000


@pytest.mark.parametrize("option", _options("data"))
def test_data_configs_instantiate(option):
    cfg = compose("config", overrides=[f"data={option}"])
    assert cfg.data.name == option
    loader = cfg.data.loader
    if "path" in loader:
        path = Path(loader.path)
        assert path.name.endswith(".jsonl.gz")
        if not SHARED_DATA.exists():
            pytest.skip(f"shared data folder {SHARED_DATA} is not available")
        assert path.resolve() == (SHARED_DATA / path.name).resolve()
    overrides = {"n": 5} if "n" in loader else {"n_pairs": 20}
    data = instantiate(loader, _convert_="all", **overrides)
    if isinstance(data, EmbeddedPairs):
        assert data.n_pairs == 20
    else:
        assert len(data) == 5
        assert {"prompt", "chosen", "rejected", "subset", "section"} <= set(data[0])


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiment_configs_compose_and_instantiate(option):
    cfg = compose("config", overrides=[f"experiment={option}"], return_hydra_config=True)
    assert cfg.experiment_name == option
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    resolved = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    assert resolved["seed"] == 0
    sweep = cfg.hydra.sweeper.params or {}
    if option == "rmb_study":
        assert cfg.data.name == "rmb"
        assert set(cfg.ood) == {"autoj", "pandalm"}
        assert sweep["backbone"] == "minilm,smollm2"
        assert sweep["split.calibrator_fit_on"] == "calibrator,head"
    if option == "label_noise":
        assert sweep["label_noise"] == "0.0,0.1,0.2,0.3,0.4"
        assert sweep["calibrator.estimator.filter_conflicts"] == "true,false"
    if option == "cross_model":
        assert set(sweep["backbone"].split(",")) == {"minilm", "smollm2"}
        assert len(sweep["data"].split(",")) >= 2
    # every object of the composed experiment builds (heavy models: target resolved)
    built = 0
    targets = [t for key in cfg if key != "hydra" for t in _targets(cfg[key], str(key))]
    for path, node in targets:
        if path == "backbone.model" and cfg.backbone.name in HEAVY_MODELS | {"minilm"}:
            assert callable(get_method(node._target_))
            continue
        if "path" in node and not Path(node.path).exists():
            pytest.skip(f"shared data file {node.path} is not available")
        if path.endswith("loader") and "n" in node:
            obj = instantiate(node, _convert_="all", n=3)
        elif path.endswith("loader"):
            obj = instantiate(node, _convert_="all", n_pairs=10)
        else:
            obj = instantiate(node, _convert_="all")
        assert obj is not None, path
        built += 1
    assert built >= 5


@pytest.mark.parametrize("option", _options("sampler"))
def test_sampler_configs_share_the_settings_and_build_lazily(option):
    from skebrm.sampling import PolicySampler

    cfg = compose("config", overrides=["experiment=overoptimization", f"sampler={option}"])
    assert cfg.sampler.name == option
    sampler = instantiate(cfg.sampler.policy, _convert_="all")  # nothing is loaded yet
    assert isinstance(sampler, PolicySampler) and sampler.backend == option
    assert sampler.settings() == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 96,
    }


def test_overoptimization_configs():
    cfg = compose("config", overrides=["experiment=overoptimization"])
    assert cfg.task == "overoptimization" and cfg.bon_data.name == "policy"
    src = cfg.bon_data.source
    assert src.n_eval_prompts >= 100 and src.n_eval_samples == 32 and src.n_train_samples >= 8
    n_pairs = src.n_train_prompts * cfg.overoptimization.pairs_per_prompt
    assert n_pairs >= 2000 and cfg.overoptimization.label_noise == 0.25
    laplace = cfg.overoptimization.proxies.laplace_bt_minus_1std
    assert laplace.estimator._target_ == "skebrm.LaplaceBradleyTerryHead"
    assert laplace.uncertainty_penalty == 1.0
    assert all(Path(f).name.startswith(("hh_rlhf", "ultrafeedback")) for f in src.prompt_files)
    gold_loader = instantiate(cfg.overoptimization.gold.model)
    assert callable(gold_loader)  # a partial: the model loads only when called
    synth = compose("config", overrides=["experiment=overoptimization_synthetic"])
    assert synth.bon_data.name == "synthetic" and synth.task == "overoptimization"


def test_hydra_nodes_instantiate():
    cfg = compose("config", return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.summary)
    assert hasattr(callback, "on_multirun_end")
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"


def test_results_name_the_weights_the_backbone_loaded(monkeypatch, tmp_path):
    from skebrm.experiments.pipeline import _backbone_model

    monkeypatch.setenv("SKEBRM_FINETUNED_RM", str(tmp_path / "noisy-rm"))
    cfg = compose(config_name="config", overrides=["backbone=minilm_rmb_finetuned"])
    assert _backbone_model(cfg) == str(tmp_path / "noisy-rm")
    cfg = compose(config_name="config", overrides=["backbone=minilm"])
    assert _backbone_model(cfg) == "skebrm.extraction.load_minilm"

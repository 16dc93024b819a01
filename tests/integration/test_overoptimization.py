"""The best-of-n over-optimisation experiment: the synthetic config end to end (CI), the
policy path on tiny random models (sampler, gold RM, proxy backbone) with its caches, the
pieces against plain loops, and the CLI entry point."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sampling_make_sampler
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from skebrm import metrics
from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.backbones import build_tiny_reward_model
from skebrm.experiments.bon_data import (
    BestOfNContext,
    BestOfNData,
    policy_best_of_n_data,
    select_prompts,
)
from skebrm.experiments.overoptimization import (
    fit_proxies,
    gold_labelled_pairs,
    length_preference,
    pessimistic_against_ensembles,
    proxy_agreement,
    run_overoptimization,
)
from skebrm.experiments.synthetic import make_synthetic_best_of_n

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "progress=false",
    "torch_threads=1",
    "calibrator.estimator.max_epochs=3",
    "calibrator.estimator.n_negatives=32",
    "++calibrator.estimator.grid_size=64",
    "overoptimization.n_bootstrap=100",
]


def _compose(overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_synthetic_config_end_to_end(tmp_path, load_script):
    cfg = _compose(["experiment=overoptimization_synthetic", *FAST])
    assert cfg.task == "overoptimization" and cfg.bon_data.name == "synthetic"
    lines = []
    res = run_overoptimization(cfg, tmp_path / "run", echo=lines.append)
    tmp_path = tmp_path / "run"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    assert (tmp_path / "best_of_n.png").read_bytes()[:4] == b"\x89PNG"
    expected = {
        "base",
        "ebrm",
        "ebrm_minus_1std",
        "bt_ensemble_mean",
        "bt_ensemble_worst_case",
        "bt_ensemble_uncertainty_weighted",
        "laplace_bt_minus_1std",
        *(f"pessimistic_b{b:g}" for b in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)),
    }
    assert set(res["summary"]) == expected | {"oracle"}
    versus = res["pessimistic_vs_ensembles"]
    ens = {n: res["summary"][n]["peak_gold"] for n in ENSEMBLES}
    assert versus["ensembles"] == ens and versus["best_ensemble"] == max(ens, key=ens.get)
    for name, v in versus["pessimistic"].items():
        gap = res["summary"][name]["peak_gold"] - max(ens.values())
        assert v["minus_best_ensemble"] == pytest.approx(gap)
        assert v["at_least_best_ensemble"] == (gap >= 0)
    assert any("Pessimistic reward against the best ensemble proxy" in line for line in lines)
    assert set(res["agreement"]) == expected
    assert res["n_train_pairs"] == 60 * 8 and res["label_noise"] == 0.25
    n = res["curves"]["base"]["n"]
    assert n == list(range(1, 17))
    np.testing.assert_allclose(res["curves"]["base"]["kl"], metrics.kl_best_of_n(np.array(n)))
    # n = 1 is the policy's mean gold reward for every proxy; the oracle is the ceiling
    for name, c in res["curves"].items():
        np.testing.assert_allclose(c["mean"][0], res["gold_mean"], atol=1e-9)
        assert np.all(np.asarray(c["mean"]) <= np.asarray(res["curves"]["oracle"]["mean"]) + 1e-9)
        assert c["ci_low"][5] <= c["mean"][5] <= c["ci_high"][5], name
    # the synthetic gold is built to be over-optimised by a proxy of the bulk of the pairs
    base = res["summary"]["base"]
    assert base["over_optimises"] and base["peak_n"] < 16 and base["drop_from_peak"] > 0
    assert res["summary"]["oracle"]["peak_n"] == 16
    assert any("peak gold" in line for line in lines)
    # the results script renders the run: its table and its plot
    docs = tmp_path.parent / "docs"
    md = load_script("scripts/make_results_tables.py").build_markdown(
        [tmp_path], docs / "figures", docs
    )
    assert "| base | " in md and "KL at peak" in md and "60 training prompts × 8 samples" in md
    assert (docs / "figures" / "overoptimization_synthetic-run-best_of_n.png").exists()


ENSEMBLES = ("bt_ensemble_worst_case", "bt_ensemble_uncertainty_weighted")


def test_pessimistic_proxies_are_the_entropic_risk_of_ebrm():
    cfg = _compose(
        [
            "experiment=overoptimization_synthetic",
            "overoptimization.proxies=null",
            "overoptimization.pessimistic_betas=[0.5,1e6]",
            *FAST,
        ]
    )
    data = make_synthetic_best_of_n(n_train_prompts=20, n_eval_prompts=4, random_state=0)
    pairs = gold_labelled_pairs(
        data.train_features, data.train_gold, pairs_per_prompt=8, label_noise=0.25
    )
    scorers, calibrator = fit_proxies(cfg, pairs)
    Z = data.eval_features.reshape(-1, data.eval_features.shape[-1])
    dist = calibrator.predict_distribution(Z)
    np.testing.assert_allclose(scorers["pessimistic_b0.5"](Z), dist.entropic_risk(0.5))
    # beta -> infinity: the distribution's mean; smaller beta: never above it
    np.testing.assert_allclose(scorers["pessimistic_b1e+06"](Z), dist.mean(), atol=1e-4)
    assert np.all(scorers["pessimistic_b0.5"](Z) <= dist.mean() + 1e-12)


def test_pessimistic_against_ensembles_on_a_plain_summary():
    summary = {
        "base": {"peak_gold": 0.1},
        "bt_ensemble_worst_case": {"peak_gold": 0.30},
        "bt_ensemble_uncertainty_weighted": {"peak_gold": 0.25},
        "pessimistic_b1": {"peak_gold": 0.31},
        "pessimistic_b2": {"peak_gold": 0.20},
    }
    out = pessimistic_against_ensembles(summary)
    assert out["best_ensemble"] == "bt_ensemble_worst_case"
    assert out["best_pessimistic"] == "pessimistic_b1"
    assert out["pessimistic"]["pessimistic_b1"]["minus_best_ensemble"] == pytest.approx(0.01)
    assert out["pessimistic"]["pessimistic_b1"]["at_least_best_ensemble"] is True
    assert out["pessimistic"]["pessimistic_b2"]["at_least_best_ensemble"] is False
    assert pessimistic_against_ensembles({"base": {"peak_gold": 0.1}}) is None


def test_gold_labelled_pairs_against_a_loop():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5, 4, 3))
    gold = rng.normal(size=(5, 4))
    gold[2, 1] = gold[2, 3]  # a tie
    out = gold_labelled_pairs(feats, gold, pairs_per_prompt=6, label_noise=0.0, random_state=1)
    assert out["n_ties"] == 1 and len(out["prompt"]) == 5 * 6 - 1
    X = out["X"].reshape(-1, 2, 3)
    for (c, r), i in zip(X, out["prompt"]):
        a = np.flatnonzero(np.all(feats[i] == c, axis=1))[0]
        b = np.flatnonzero(np.all(feats[i] == r, axis=1))[0]
        assert gold[i, a] > gold[i, b]
    noisy = gold_labelled_pairs(feats, gold, pairs_per_prompt=6, label_noise=0.25, random_state=1)
    assert noisy["flipped"].sum() == round(0.25 * 29)
    Xn = noisy["X"].reshape(-1, 2, 3)
    np.testing.assert_array_equal(Xn[~noisy["flipped"]], X[~noisy["flipped"]])
    np.testing.assert_array_equal(Xn[noisy["flipped"]], X[noisy["flipped"]][:, ::-1])
    with pytest.raises(ValueError, match=r"pairs_per_prompt must be an int in \[1, 6\]"):
        gold_labelled_pairs(feats, gold, pairs_per_prompt=7, label_noise=0.0)
    with pytest.raises(ValueError, match=r"label_noise must be in \[0, 1\]"):
        gold_labelled_pairs(feats, gold, pairs_per_prompt=2, label_noise=1.5)


def test_proxy_agreement():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(30, 8))
    assert proxy_agreement(gold, gold, pairs_per_prompt=10)["accuracy"] == 1.0
    assert proxy_agreement(-gold, gold, pairs_per_prompt=10)["accuracy"] == 0.0
    flat = proxy_agreement(np.zeros_like(gold), gold, pairs_per_prompt=10)
    assert flat["accuracy"] == 0.5 and flat["n_pairs"] == 300


def _plain_length_preference(reward, n_tokens, finished):
    longer, cut = [], []
    for r, n, f in zip(reward, n_tokens, finished):
        for a in range(len(r)):
            for b in range(len(r)):
                win = 1.0 if r[a] > r[b] else 0.5 if r[a] == r[b] else 0.0
                if n[a] > n[b]:
                    longer.append(win)
                if not f[a] and f[b]:
                    cut.append(win)
    return np.mean(longer), len(longer), np.mean(cut), len(cut)


def test_length_preference_against_plain_loops():
    rng = np.random.default_rng(0)
    n_tokens = rng.integers(5, 12, size=(6, 7))  # ties in length are left out
    finished = n_tokens < 11  # cut off at the budget
    reward = np.round(0.1 * n_tokens + rng.normal(scale=0.3, size=(6, 7)), 1)  # with ties
    got = length_preference(reward, n_tokens, finished)
    longer, n_longer, cut, n_cut = _plain_length_preference(reward, n_tokens, finished)
    assert math.isclose(got["longer"], longer) and got["n_pairs_longer"] == n_longer
    assert math.isclose(got["cut_off"], cut) and got["n_pairs_cut_off"] == n_cut
    assert length_preference(n_tokens, n_tokens, finished)["longer"] == 1.0
    assert length_preference(-n_tokens, n_tokens)["longer"] == 0.0
    flat = length_preference(np.zeros((6, 7)), n_tokens, finished)
    assert flat["longer"] == 0.5 and flat["cut_off"] == 0.5
    assert length_preference(reward, n_tokens)["cut_off"] is None
    assert length_preference(reward, n_tokens, np.ones_like(finished))["n_pairs_cut_off"] == 0
    with pytest.raises(ValueError, match=r"reward and n_tokens must be 2-D arrays of one shape"):
        length_preference(reward, n_tokens[:, :3])
    with pytest.raises(ValueError, match=r"finished must have the shape of reward \(6, 7\)"):
        length_preference(reward, n_tokens, finished[:2])


def _write_pairs(path: Path, prompts: list[str]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"id": str(i), "prompt": p, "chosen": "a", "rejected": "b"}) + "\n")
    return str(path)


def test_select_prompts_is_disjoint_and_even(tmp_path):
    a = _write_pairs(
        tmp_path / "a.jsonl.gz", [f"Human: alpha {i}" for i in range(20)] + ["x" * 900]
    )
    b = _write_pairs(tmp_path / "b.jsonl.gz", [f"beta {i}" for i in range(20)])
    train, ev = select_prompts([a, b], n_train=7, n_eval=4, max_prompt_chars=800, random_state=0)
    assert len(train) == 7 and len(ev) == 4 and not set(train) & set(ev)
    assert sum(p.startswith("Human") for p in train) == 4  # remainder to the first file
    assert sum(p.startswith("Human") for p in ev) == 2
    assert all(len(p) <= 800 for p in train + ev)
    assert select_prompts([a, b], n_train=7, n_eval=4, random_state=0) == (train, ev)
    with pytest.raises(ValueError, match="fewer than the 30 asked"):
        select_prompts([a], n_train=20, n_eval=10)


def test_policy_path_on_tiny_models_uses_its_caches(tmp_path, monkeypatch):
    files = [
        _write_pairs(tmp_path / "hh.jsonl.gz", [f"Human: question {i}?" for i in range(12)]),
        _write_pairs(tmp_path / "uf.jsonl.gz", [f"Write {i} words." for i in range(12)]),
    ]
    sampler = sampling_make_sampler(max_new_tokens=6, batch_size=8)
    ctx = BestOfNContext(
        sampler=sampler,
        load_gold=lambda: build_tiny_reward_model("bert", seed=1),
        load_proxy=lambda: build_tiny_reward_model("llama", seed=2),
        gold={"name": "tiny_gold", "max_length": 64, "batch_size": 8},
        proxy={"name": "tiny_proxy", "max_length": 64, "batch_size": 8},
        cache_dir=str(tmp_path / "cache"),
        seed=0,
    )
    kw = {
        "prompt_files": files,
        "n_train_prompts": 6,
        "n_eval_prompts": 4,
        "n_train_samples": 4,
        "n_eval_samples": 5,
        "shard_size": 2,
    }
    data = policy_best_of_n_data(ctx, **kw)
    assert isinstance(data, BestOfNData)
    assert data.train_features.shape == (6, 4, 16) and data.eval_gold.shape == (4, 5)
    assert np.isfinite(data.eval_gold).all() and data.eval_gold.std() > 0
    assert data.info["sampler"]["backend"] == "transformers"
    assert 1 <= data.info["eval_mean_tokens"] <= 6
    caches = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert caches == ["samples", "tiny_gold", "tiny_gold", "tiny_proxy", "tiny_proxy"]

    # a second run reads every cache: no sampling, no model built
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(sampler, "_sample", refuse)
    ctx.load_gold = ctx.load_proxy = refuse
    again = policy_best_of_n_data(ctx, **kw)
    np.testing.assert_array_equal(again.eval_gold, data.eval_gold)
    np.testing.assert_array_equal(again.train_features, data.train_features)

    cfg = _compose(["experiment=overoptimization", *FAST, "overoptimization.pairs_per_prompt=3"])
    res = run_overoptimization(cfg, tmp_path / "run", echo=lambda s: None, data=data)
    assert res["n_eval_samples"] == 5 and res["n_train_pairs"] <= 6 * 3
    assert res["source"]["sample_caches"]["eval"].startswith(str(tmp_path / "cache"))


def test_context_keys_the_gold_cache_by_its_weights(tmp_path):
    from skebrm.experiments.overoptimization import build_context

    gold = tmp_path / "gold"
    gold.mkdir()
    (gold / "model.safetensors").write_bytes(b"v1")
    overrides = ["experiment=overoptimization", f"overoptimization.gold.model.name_or_path={gold}"]
    first = build_context(_compose(overrides), progress=False).gold["weights_sha256"]
    (gold / "model.safetensors").write_bytes(b"v2")  # retrained into the same folder
    second = build_context(_compose(overrides), progress=False).gold["weights_sha256"]
    assert first != second and len(first) == 64


def test_synthetic_source_shapes_and_errors():
    d = make_synthetic_best_of_n(
        n_train_prompts=3, n_train_samples=4, n_eval_prompts=2, n_eval_samples=5, random_state=0
    )
    assert d.train_features.shape == (3, 4, 8) and d.eval_gold.shape == (2, 5)
    with pytest.raises(ValueError, match="n_features must be an int >= 2"):
        make_synthetic_best_of_n(n_features=1)
    with pytest.raises(
        ValueError, match=r"train_features must have shape \(n_prompts, n_samples, d\)"
    ):
        BestOfNData(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((1, 2, 3)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"eval_n_tokens must have the shape of eval_gold"):
        BestOfNData(*[np.zeros((1, 2, 3)), np.zeros((1, 2))] * 2, eval_n_tokens=np.zeros(2))


def test_sample_policy_script_fills_the_runs_cache(tmp_path, load_script):
    from conftest import SAMPLING_CHAT_TEMPLATE, extraction_make_tokenizer, sampling_make_causal_lm

    policy = tmp_path / "policy"
    sampling_make_causal_lm().save_pretrained(policy)
    extraction_make_tokenizer(SAMPLING_CHAT_TEMPLATE).save_pretrained(policy)
    files = [_write_pairs(tmp_path / "p.jsonl.gz", [f"Human: q{i}" for i in range(10)])]
    argv = [
        f"sampler.policy.model={policy}",
        "sampler.policy.max_new_tokens=4",
        f"bon_data.source.prompt_files=[{files[0]}]",
        "bon_data.source.n_train_prompts=3",
        "bon_data.source.n_eval_prompts=2",
        "bon_data.source.n_train_samples=2",
        "bon_data.source.n_eval_samples=3",
        f"cache_dir={tmp_path / 'cache'}",
        "progress=false",
    ]
    out = load_script("scripts/sample_policy.py").main(argv)
    assert out["eval"][1].shape == (2, 3) and out["train"][1].shape == (3, 2)
    folders = sorted((tmp_path / "cache" / "samples").iterdir())
    assert len(folders) == 2 and all(p.name.startswith("transformers-") for p in folders)
    again = load_script("scripts/sample_policy.py").main(argv)  # read back, same samples
    assert (again["eval"][1] == out["eval"][1]).all()


def test_cli_runs_the_synthetic_experiment(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "skebrm.experiments.main",
        "experiment=overoptimization_synthetic",
        *FAST,
        f"hydra.run.dir={tmp_path}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "peak gold" in out.stdout
    assert json.loads((tmp_path / "results.json").read_text())["task"] == "overoptimization"

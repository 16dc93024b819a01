"""The experiment pipeline end to end on synthetic data, a real MiniLM run and a multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from skebrm.exceptions import IneffectiveParameterWarning, RefinementWarning
from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.data import (
    EmbeddedPairs,
    annotator_disagreement,
    flip_labels,
    load_pairs_coercing_texts,
    response_keys,
    split_pairs,
)
from skebrm.experiments.pipeline import run_experiment
from skebrm.experiments.report import _jsonable, load_runs, summary_table
from skebrm.experiments.synthetic import make_synthetic_pairs

REPO = Path(__file__).resolve().parents[2]
# a small, fast calibrator and baselines: these tests check the machinery, not the method
TINY_CALIBRATOR = [
    "calibrator.estimator.hidden=[32,16]",
    "calibrator.estimator.n_negatives=32",
    "calibrator.estimator.max_epochs=3",
    "calibrator.estimator.learning_rate=1e-3",
    "++calibrator.estimator.grid_size=64",
]
TINY_MLP = [
    "baselines.mlp_filtered.estimator.max_epochs=3",
    "baselines.mlp_filtered.estimator.hidden=[8]",
]
FAST = ["evaluation.n_bootstrap=50", "progress=false", "torch_threads=1"]
NO_BASELINES = ["baselines=none", *TINY_CALIBRATOR, *FAST]
TINY = [*TINY_CALIBRATOR, *TINY_MLP, *FAST]


def _compose(overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def echo():
    lines = []
    return lines, lines.append


def _check_method_block(methods):
    assert {"base", "base_margin", "ebrm", "ebrm_global", "ebrm_mean"} <= set(methods)
    assert {"bt_ensemble_mean", "bt_ensemble_worst_case", "mlp_filtered"} <= set(methods)
    assert "laplace_bt" in methods
    assert {"lwr", "ebrm+lwr", "lwr+ebrm", "pessimistic"} <= set(methods)
    for name, m in methods.items():
        assert 0.0 <= m["accuracy"] <= 1.0, name
        assert set(m["rewardbench"]["sections"]) == {"A", "B"}
        assert -1.0 <= m["length_spearman"] <= 1.0, name
        if name != "base":
            vs = m["vs_base"]
            assert vs["ci_low"] <= vs["difference"] <= vs["ci_high"], name
    ebrm = methods["ebrm"]
    assert 0.0 <= ebrm["misorder_auroc_base"] <= 1.0
    assert set(ebrm["abstention"]) == {"0.0", "0.1", "0.2", "0.3"}
    assert 0.0 <= ebrm["ece"] <= 1.0
    assert "ece" in methods["base"] and "misorder_auroc_base" not in methods["base"]
    assert "misorder_auroc_base" in methods["bt_ensemble_mean"]
    # the base margin: the base RM's rewards, scored by its own margin
    margin = methods["base_margin"]
    assert margin["accuracy"] == methods["base"]["accuracy"]
    assert margin["vs_base"]["difference"] == 0.0
    assert margin["misorder_auroc_base"] == margin["misorder_auroc_self"] > 0.5
    # the Laplace head is the base head's weights (read off its rewards) with a posterior
    laplace = methods["laplace_bt"]
    assert laplace["accuracy"] == pytest.approx(methods["base"]["accuracy"], abs=0.02)
    assert 0.0 <= laplace["misorder_auroc_base"] <= 1.0 and 0.0 <= laplace["ece"] <= 1.0


def test_synthetic_run_writes_results_table_and_plots(tmp_path, echo):
    lines, say = echo
    cfg = _compose(["data=synthetic", *TINY])
    results = run_experiment(cfg, tmp_path, echo=say)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["data"] == "synthetic" and on_disk["backbone"] == "minilm"
    assert on_disk["n_pairs"] == {"head": 240, "calibrator": 80, "test": 80}
    _check_method_block(on_disk["test"]["methods"])
    # a linear reward on 240 clean-ish pairs: the base head is far above chance
    assert on_disk["test"]["methods"]["base"]["accuracy"] > 0.75
    assert results["test"]["methods"]["ebrm"]["accuracy"] == pytest.approx(
        on_disk["test"]["methods"]["ebrm"]["accuracy"]
    )
    for png in ("reliability.png", "abstention.png", "selection.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    table = "\n".join(lines)
    assert "| ebrm |" in table and "| base |" in table and "Δ vs base" in table

    # the README tables and figures regenerate from this run
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from make_results_tables import main as make_tables
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "docs" / "results.md"
    assert make_tables([str(tmp_path), "--output", str(out)]) == 0
    text = out.read_text()
    assert "| ebrm |" in text and "figures/default-" in text
    assert sorted(p.name for p in (tmp_path / "docs" / "figures").iterdir()) == [
        f"default-{tmp_path.name}-abstention.png",
        f"default-{tmp_path.name}-reliability.png",
        f"default-{tmp_path.name}-selection.png",
    ]


def test_label_noise_head_split_and_ood(tmp_path, echo):
    _, say = echo
    cfg = _compose(
        [
            "data=synthetic",
            "label_noise=0.3",
            "split.calibrator_fit_on=head",
            "calibrator.estimator.filter_conflicts=false",
            "+ood.shifted={name: shifted, loader: {_target_: "
            "skebrm.experiments.synthetic.make_synthetic_pairs, n_pairs: 60, "
            "n_features: 16, random_state: 0, rm_noise: 2.0}}",
            *NO_BASELINES,
        ]
    )
    results = run_experiment(cfg, tmp_path, echo=say)
    assert results["label_noise"] == 0.3
    assert results["calibrator_fit_on"] == "head"
    assert results["backbone_model"] == "skebrm.extraction.load_minilm"
    assert results["calibrator_fit"]["n_pairs_dropped"] == 0  # filtering is off
    assert set(results["test"]["methods"]) == {
        "base",
        "base_margin",
        "ebrm",
        "ebrm_global",
        "ebrm_mean",
        "lwr",
        "ebrm+lwr",
        "lwr+ebrm",
        "pessimistic",
    }
    assert results["ood"]["shifted"]["n_pairs"] == 60
    assert "ebrm" in results["ood"]["shifted"]["methods"]


SHIFTED = (
    "+ood.shifted={name: shifted, loader: {_target_: "
    "skebrm.experiments.synthetic.make_synthetic_pairs, n_pairs: 60, "
    "n_features: 16, random_state: 0, rm_noise: 2.0}}"
)


def test_guard_target_decides_the_guard_on_half_of_an_ood_set(tmp_path, echo):
    _, say = echo
    # guard_confidence=1: the exact test's p-value must be 0 to keep refinement (never)
    overrides = [
        "data=synthetic",
        SHIFTED,
        "++calibrator.estimator.guard=base",
        "++calibrator.estimator.guard_confidence=1.0",
        *NO_BASELINES,
    ]
    with pytest.warns(RefinementWarning, match="pairs given to fit_guard"):
        results = run_experiment(_compose([*overrides, "guard_target=shifted"]), tmp_path, echo=say)
    fit = results["calibrator_fit"]
    assert results["guard_target"] == "shifted"
    assert fit["guard"]["source"] == "fit_guard"
    assert fit["guard_validation"] is None  # this calibrator has no validation split
    shifted = results["ood"]["shifted"]
    # the guard's half and the scored half are disjoint halves of the 60 pairs
    assert shifted["scored_half"] is True
    assert fit["guard"]["n_pairs"] + shifted["n_pairs"] == 60
    assert 20 <= shifted["n_pairs"] <= 40
    assert fit["refinement_helps"] is False and fit["guard"]["p_value"] > 0.0
    # guard=base: the refined reward is the base reward, on every set
    for block in (shifted, results["test"]):
        assert block["methods"]["ebrm"]["vs_base"]["difference"] == 0.0
    with pytest.warns(IneffectiveParameterWarning, match="until fit_guard is called"):
        plain = run_experiment(_compose(overrides), tmp_path / "plain", echo=say)
    assert "guard_target" not in plain and plain["calibrator_fit"]["guard"] is None
    assert plain["ood"]["shifted"]["n_pairs"] == 60
    assert plain["test"]["methods"]["ebrm"]["vs_base"]["difference"] != 0.0
    with pytest.raises(ValueError, match=r"guard_target must be null or one of the ood sets"):
        run_experiment(_compose([*overrides, "guard_target=pandalm"]), tmp_path / "bad")


FLAGS = {"mahalanobis", "ebrm_std", "laplace_std", "negative_margin"}
SCORES = {"margin", "laplace_probability", "ebrm_probability", "ebrm_inverse_std"}


def test_posthoc_tools_reach_results(tmp_path, echo):
    base = ["data=synthetic", SHIFTED, "evaluation.plots=false", *TINY]
    lines, say = echo
    results = run_experiment(_compose(base), tmp_path / "a", echo=say)
    table = "\n".join(lines)
    for title in (
        "length bias",
        "pair selection (calibrated on a seeded half",
        "out-of-distribution AUROC",
        "choosing guard (decided on half of each set's prompts",
    ):
        assert title in table, title
    assert "| lwr+ebrm |" in table and "| shifted | margin | ltt |" in table
    ph = results["posthoc"]
    assert ph["debias"]["mode"] == "transductive" and ph["debias"]["feature"] == "chars"
    assert (
        ph["pessimistic"]["beta"] > 0
        and "std of the base reward" in ph["pessimistic"]["beta_source"]
    )
    assert ph["ood_flags"]["mahalanobis_fitted_on"] == "head"
    assert ph["step_choice"]["candidates"] == ["base", "lwr", "ebrm", "lwr+ebrm", "ebrm_mean"]
    for block in (results["test"], results["ood"]["shifted"]):
        sc = block["step_choice"]
        assert sc["candidates"] == ph["step_choice"]["candidates"]
        assert [f["n_decide"] + f["n_held_out"] for f in sc["folds"]] == [block["n_pairs"]] * 2
        for f in sc["folds"]:
            assert f["step"] in sc["candidates"]
            assert f["step"] == "base" or f["decision"][f["step"]]["passes"]
            assert set(f["held_out_accuracy"]) == set(sc["candidates"])
    for block in (results["test"], results["ood"]["shifted"]):
        length = block["length"]
        assert 0.0 <= length["chosen_longer"] <= 1.0
        assert length["reward_spearman"] == block["methods"]["base"]["length_spearman"]
        sel = block["selection"]
        assert sel["alphas"] == [0.05, 0.1, 0.2] and set(sel["scores"]) == SCORES
        assert (
            sel["n_calibration"] + results["test"]["selection"]["n_scored"]
            == results["n_pairs"]["test"]
        )
        for score in sel["scores"].values():
            for method in ("ltt", "conformal"):
                assert set(score[method]) == {0.05, 0.1, 0.2}
                for entry in score[method].values():
                    assert 0.0 <= entry["risk"] <= 1.0 and 0.0 <= entry["coverage"] <= 1.0
                    assert entry["accepted_none"] == (entry["coverage"] == 0.0)
            assert len(score["curve"]["coverage"]) == len(score["curve"]["risk"]) == 20
    assert results["ood"]["shifted"]["selection"]["n_scored"] == 60
    flags = results["ood"]["shifted"]["ood_flags"]
    assert set(flags) == FLAGS and all(0.0 <= v <= 1.0 for v in flags.values())
    assert "ood_flags" not in results["test"]
    # debiasing removes most of the length-reward correlation the base reward has
    methods = results["test"]["methods"]
    assert abs(methods["lwr"]["length_spearman"]) < abs(methods["base"]["length_spearman"])

    # the post-hoc tables and targets over runs (one seed here)
    from skebrm.experiments.report_posthoc import posthoc_tables, posthoc_targets

    targets = posthoc_targets([(tmp_path / "a", results)])
    (key,) = targets
    t = targets[key]
    assert key == (results["backbone"], results["calibrator"]) and t["n_seeds"] == 1
    assert set(t["flags"]) == {"shifted"} and set(t["flags"]["shifted"]) == FLAGS
    assert set(t["steps"]) == {"test", "shifted"} and isinstance(t["e"], bool)
    m = results["test"]["methods"]
    assert t["a_best"][1]["gain"] >= m["lwr"]["accuracy"] - m["base"]["accuracy"] - 1e-12
    page = posthoc_tables([(tmp_path / "a", results)])
    for title in (
        "Length debiasing",
        "Pair selection",
        "Out-of-distribution AUROC",
        "Choosing guard",
        "Targets of the post-hoc tools",
    ):
        assert title in page, title

    # inductive debiasing and a configured beta; beta -> infinity is EBRM's mean
    inductive = run_experiment(
        _compose([*base, "posthoc.debias.mode=inductive", "posthoc.pessimistic.beta=1e6"]),
        tmp_path / "b",
        echo=say,
    )
    assert inductive["posthoc"]["debias"]["fitted_on"] == "calibrator"
    assert inductive["posthoc"]["pessimistic"] == {"beta": 1e6, "beta_source": "configured"}
    im = inductive["test"]["methods"]
    assert im["pessimistic"]["accuracy"] == im["ebrm_mean"]["accuracy"]
    assert _jsonable(im["base"]) == _jsonable(methods["base"])  # the rest is unchanged
    # posthoc=none: the methods and keys of a run before these tools
    none = run_experiment(_compose([*base, "posthoc=none"]), tmp_path / "c", echo=say)
    assert not {"lwr", "ebrm+lwr", "lwr+ebrm", "pessimistic"} & set(none["test"]["methods"])
    assert "posthoc" not in none and "selection" not in none["test"]
    assert "step_choice" not in none["test"]
    assert "ood_flags" not in none["ood"]["shifted"]
    assert _jsonable(none["test"]["methods"]["ebrm"]) == _jsonable(methods["ebrm"])


def test_old_committed_runs_still_render():
    from skebrm.experiments.report import format_table

    for name in ("default_main_job", "rmb_full"):
        for path in sorted((REPO / "docs" / "runs" / name).rglob("results.json"))[:2]:
            text = format_table(json.loads(path.read_text()))
            assert "| ebrm |" in text, path


def test_votes_and_best_of_k_reach_results_and_tables(tmp_path, echo):
    lines, say = echo
    grouped = ["+data.loader.pairs_per_prompt=3", "+data.loader.rejected_per_chosen=3"]
    cfg = _compose(
        [
            "data=synthetic",
            *grouped,
            "+data.loader.n_annotators=3",
            "+ood.voted={name: voted, loader: {_target_: "
            "skebrm.experiments.synthetic.make_synthetic_pairs, n_pairs: 90, "
            "n_features: 16, random_state: 1, n_annotators: 3}}",
            "evaluation.plots=false",
            *TINY,
        ]
    )
    results = run_experiment(cfg, tmp_path, echo=say)
    test, voted = results["test"], results["ood"]["voted"]
    assert test["n_pairs_with_votes"] == test["n_pairs"] == results["n_pairs"]["test"]
    assert 0 < test["n_pairs_disagreement"] < test["n_pairs"]
    for block in (test, voted):
        for name in ("base_margin", "ebrm", "laplace_bt", "bt_ensemble_mean"):
            assert 0.0 <= block["methods"][name]["disagreement_auroc"] <= 1.0, name
        assert "disagreement_auroc" not in block["methods"]["mlp_filtered"]  # no uncertainty
    bok = test["methods"]["base"]["best_of_k"]
    assert bok["n_groups"] > 0 and bok["mean_k"] > 2 and 0.0 <= bok["accuracy"] <= 1.0
    assert "best_of_k" not in voted["methods"]["base"]  # the OOD set has no shared responses
    table = "\n".join(lines)
    assert "AUROC disagreement" in table and "best-of-k (" in table
    assert "annotators disagree on" in table
    summary = summary_table([(tmp_path, results)])
    header = summary.splitlines()[0]
    for column in (
        "AUROC base errors: base_margin",
        "AUROC base errors: laplace_bt",
        "AUROC disagreement: ebrm",
        "ECE: laplace_bt",
        "best-of-k: base",
    ):
        assert column in header, column
    assert "| base_margin |" not in header  # its accuracy is the base's
    ood = summary_table([(tmp_path, results)], split="voted").splitlines()[0]
    assert "AUROC disagreement: base_margin" in ood and "best-of-k" not in ood


def test_label_noise_hurts_the_base_head(tmp_path):
    accs = {}
    for noise in (0.0, 0.45):
        cfg = _compose(
            [
                "data=synthetic",
                "data.loader.n_pairs=600",
                f"label_noise={noise}",
                "evaluation.plots=false",
                *NO_BASELINES,
            ]
        )
        res = run_experiment(cfg, tmp_path / str(noise), echo=lambda s: None)
        accs[noise] = res["test"]["methods"]["base"]["accuracy"]
    assert accs[0.45] < accs[0.0] - 0.05


def test_split_pairs_keeps_prompts_apart():
    data = make_synthetic_pairs(n_pairs=90, pairs_per_prompt=3, random_state=1)
    parts = split_pairs(data, [0.6, 0.2, 0.2], random_state=0)
    assert sum(p.n_pairs for p in parts) == 90
    prompts = [set(p.prompt) for p in parts]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    # rows follow their pairs: chosen first, embeddings and rewards aligned
    for part in parts:
        for i in range(part.n_pairs):
            j = int(np.flatnonzero(data.prompt == part.prompt[i])[0])
            rows = np.flatnonzero((data.embeddings == part.embeddings[2 * i]).all(axis=1))
            assert rows.size == 1 and rows[0] % 2 == 0
            assert data.prompt[rows[0] // 2] == part.prompt[i] == data.prompt[j]
            assert data.rewards[rows[0]] == part.rewards[2 * i]


def test_flip_labels_swaps_exactly_the_requested_pairs():
    data = make_synthetic_pairs(n_pairs=40, random_state=2)
    flipped = flip_labels(data, 0.25, random_state=0)
    swapped = [
        i
        for i in range(40)
        if np.array_equal(flipped.embeddings[2 * i], data.embeddings[2 * i + 1])
        and np.array_equal(flipped.embeddings[2 * i + 1], data.embeddings[2 * i])
        and flipped.rewards[2 * i] == data.rewards[2 * i + 1]
    ]
    same = [
        i for i in range(40) if np.array_equal(flipped.embeddings[2 * i], data.embeddings[2 * i])
    ]
    assert len(swapped) == 10 and len(same) == 30
    assert flip_labels(data, 0.0).embeddings.tobytes() == data.embeddings.tobytes()
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        flip_labels(data, 1.5)


def test_label_noise_seed_per_training_split():
    from skebrm.experiments.data import label_noise_seed

    assert (label_noise_seed("head", 7), label_noise_seed("calibrator", 7)) == (7, 8)
    with pytest.raises(
        ValueError, match=r"split must be one of \['calibrator', 'head'\], got 'test'"
    ):
        label_noise_seed("test", 7)


def test_embedded_pairs_checks_shapes():
    obj = np.array(["a"], dtype=object)
    with pytest.raises(ValueError, match=r"embeddings must have shape \(2, d\) for 1 pairs"):
        EmbeddedPairs(np.zeros((3, 2)), None, obj, obj, obj)
    with pytest.raises(ValueError, match=r"rewards must have shape \(2,\)"):
        EmbeddedPairs(np.zeros((2, 2)), np.zeros(3), obj, obj, obj)
    with pytest.raises(ValueError, match="subset must have 1 entries"):
        EmbeddedPairs(np.zeros((2, 2)), None, obj, np.array([], object), obj)


def test_embedded_pairs_carry_response_keys_and_disagreement():
    data = make_synthetic_pairs(
        n_pairs=90, pairs_per_prompt=3, rejected_per_chosen=3, n_annotators=3, random_state=5
    )
    # the same response has the same key, wherever it appears
    for i in range(0, 180, 7):
        same = np.flatnonzero(data.response_key == data.response_key[i])
        assert all(np.array_equal(data.embeddings[j], data.embeddings[i]) for j in same)
    idx = np.random.default_rng(0).permutation(90)[:40]
    sub = data.take(idx)
    np.testing.assert_array_equal(sub.response_key[0::2], data.response_key[2 * idx])
    np.testing.assert_array_equal(sub.response_key[1::2], data.response_key[2 * idx + 1])
    np.testing.assert_array_equal(sub.disagreement, data.disagreement[idx])
    back = EmbeddedPairs.concat(split_pairs(data, [0.5, 0.5], random_state=0))
    assert back.n_pairs == 90 and back.disagreement.shape == (90,)
    assert sorted(back.response_key.tolist()) == sorted(data.response_key.tolist())
    # groups: pairs of one prompt whose chosen row is one response
    group = data.chosen_group
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        assert len({data.prompt[m] for m in members}) == 1
        assert len({data.response_key[2 * m] for m in members}) == 1
    # flipping a pair swaps its keys with its rows; disagreement belongs to the pair
    flipped = flip_labels(data, 1.0, random_state=0)
    np.testing.assert_array_equal(flipped.response_key[0::2], data.response_key[1::2])
    np.testing.assert_array_equal(flipped.disagreement, data.disagreement)
    # a part without votes gets NaN in a concatenation; without keys, no keys
    plain = make_synthetic_pairs(n_pairs=10, random_state=0)
    mixed = EmbeddedPairs.concat([plain, data])
    assert np.isnan(mixed.disagreement[:10]).all() and not np.isnan(mixed.disagreement[10:]).any()
    nokeys = EmbeddedPairs.concat([replace(plain, response_key=None), data])
    assert nokeys.response_key is None and nokeys.chosen_group is None


def test_annotator_disagreement_and_response_keys_from_records():
    records = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "meta": {"votes": [1, 1, 1]}},
        {"prompt": "p", "chosen": "a", "rejected": "c", "meta": {"votes": [1, 0, 1]}},
        {"prompt": "q", "chosen": "a", "rejected": "b", "meta": {"agreement": 1.0}},
        {"prompt": "q", "chosen": "b", "rejected": "a", "meta": None},
    ]
    d = annotator_disagreement(records)
    np.testing.assert_array_equal(d[:2], [0.0, 1.0])
    assert np.isnan(d[2:]).all()
    assert annotator_disagreement(records[2:]) is None
    keys = response_keys(records)
    assert keys[0] == keys[2]  # "a" to "p", twice
    assert keys[0] != keys[4]  # "a" to "q" is another response
    assert keys[4] == keys[7] and keys[5] == keys[6]


def test_pandalm_votes_give_disagreement(tmp_path):
    path = Path(os.environ["SKEBRM_DATA_DIR"]) / "pandalm_testset_v1_majority.jsonl.gz"
    if not path.exists():
        pytest.skip("the shared PandaLM file is not next to this checkout")
    pairs = load_pairs_coercing_texts(path)
    d = annotator_disagreement(pairs)
    # 894 pairs; 794 unanimous ([1, 1, 1] or [2, 2, 2]), 100 with a dissenting vote
    assert d.shape == (894,) and int(d.sum()) == 100 and not np.isnan(d).any()


def test_embed_pairs_keys_the_cache_by_texts_only(tmp_path):
    """meta (votes) travels into EmbeddedPairs but not into the cache key or folder."""
    from skebrm.experiments.backbones import build_tiny_reward_model
    from skebrm.experiments.data import cache_key, embed_pairs

    pairs = [
        {"id": "0", "prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.",
         "meta": {"votes": [2, 2, 1]}},
        {"id": "1", "prompt": "Hi", "chosen": "Hello!", "rejected": "What?",
         "meta": {"votes": [1, 1, 1]}},
    ]  # fmt: skip
    bare = [{k: v for k, v in p.items() if k != "meta"} for p in pairs]
    identity = {"name": "tiny-bert"}
    assert cache_key(pairs, {**identity, "max_length": 32}) == cache_key(
        bare, {**identity, "max_length": 32}
    )
    calls = []

    def load():
        calls.append(1)
        return build_tiny_reward_model("bert")

    kw = {"identity": identity, "cache_dir": tmp_path, "max_length": 32, "batch_size": 4}
    data = embed_pairs(pairs, load, **kw)
    np.testing.assert_array_equal(data.disagreement, [1.0, 0.0])
    assert data.chosen_group.tolist() == [0, 0]
    again = embed_pairs(bare, load, **kw)  # same folder: read from the cache, no model
    assert calls == [1] and len(list(tmp_path.iterdir())) == 1
    np.testing.assert_array_equal(again.embeddings, data.embeddings)
    assert again.disagreement is None
    np.testing.assert_array_equal(again.response_key, data.response_key)
    # lengths come from the texts after the cache, chosen row first
    np.testing.assert_array_equal(data.length, [6.0, 8.0, 6.0, 5.0])
    np.testing.assert_array_equal(data.markdown, [0.0, 0.0, 0.0, 0.0])


def test_lengths_travel_with_their_rows():
    from skebrm.debias import markdown_element_count
    from skebrm.experiments.data import response_lengths

    records = [
        {"prompt": "p", "chosen": "# T\n- **a**", "rejected": "plain"},
        {"prompt": "q", "chosen": "x", "rejected": "`code` and *it*"},
    ]
    length, markdown = response_lengths(records)
    texts = [r[f] for r in records for f in ("chosen", "rejected")]
    np.testing.assert_array_equal(length, [len(t) for t in texts])
    np.testing.assert_array_equal(markdown, [markdown_element_count(t) for t in texts])
    data = make_synthetic_pairs(n_pairs=40, random_state=3)
    idx = np.array([5, 1, 30])
    sub = data.take(idx)
    np.testing.assert_array_equal(sub.length[0::2], data.length[2 * idx])
    np.testing.assert_array_equal(sub.markdown[1::2], data.markdown[2 * idx + 1])
    flipped = flip_labels(data, 1.0, random_state=0)
    np.testing.assert_array_equal(flipped.length[0::2], data.length[1::2])
    np.testing.assert_array_equal(flipped.markdown[1::2], data.markdown[0::2])
    parts = split_pairs(data, [0.5, 0.5], random_state=0)
    back = EmbeddedPairs.concat(parts)
    np.testing.assert_array_equal(back.length, np.concatenate([p.length for p in parts]))
    assert EmbeddedPairs.concat([replace(parts[0], length=None), parts[1]]).length is None
    assert data.feature("chars") is data.length and data.feature("markdown") is data.markdown
    with pytest.raises(ValueError, match="name must be 'chars' or 'markdown'"):
        data.feature("tokens")
    with pytest.raises(ValueError, match="length must have shape"):
        replace(data, length=data.length[:-1])
    # the lengths come from a second stream: every other draw is as before
    for name in ("embeddings", "rewards", "response_key"):
        again = make_synthetic_pairs(n_pairs=40, random_state=3, length_bias=0.0)
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))


def test_load_pairs_coercing_texts(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"id": "1", "prompt": "Is 2 even?", "chosen": True, "rejected": "No."},
        {"id": "2", "prompt": "Count", "chosen": "3", "rejected": 4},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_pairs_coercing_texts(path)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("True", "No."), ("3", "4")]
    assert len(load_pairs_coercing_texts(path, n=1, random_state=0)) == 1
    with pytest.raises(FileNotFoundError, match="no file at path"):
        load_pairs_coercing_texts(tmp_path / "missing.jsonl")


def test_bad_split_name_is_refused(tmp_path):
    cfg = _compose(["data=synthetic", "split.calibrator_fit_on=test", *TINY])
    with pytest.raises(ValueError, match="calibrator_fit_on must be 'head' or 'calibrator'"):
        run_experiment(cfg, tmp_path, echo=lambda s: None)


def test_native_base_reward_without_rewards_is_refused(tmp_path):
    from skebrm.experiments.data import EmbeddedPairs
    from skebrm.experiments.pipeline import _base_model

    cfg = _compose(["data=synthetic", "base_reward=native", *TINY])
    data = EmbeddedPairs(
        np.zeros((4, 2)),
        None,
        np.array(["a", "b"], object),
        np.array(["s", "s"], object),
        np.array([None, None], object),
    )
    with pytest.raises(ValueError, match="base_reward='native' needs rewards"):
        _base_model(cfg, data)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_tiny_multirun_writes_one_summary(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "skebrm.experiments.main",
        "-m",
        "data=synthetic",
        "label_noise=0.0,0.3",
        "evaluation.plots=false",
        "hydra.launcher.n_jobs=1",
        f"hydra.sweep.dir={sweep}",
        *NO_BASELINES,
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = load_runs(sweep)
    assert sorted(r["label_noise"] for _, r in runs) == [0.0, 0.3]
    summary = (sweep / "summary.md").read_text()
    assert "label_noise" in summary and summary.count("\n| 0.") == 2
    assert summary_table(runs) in summary
    assert "| ebrm |" in proc.stdout


@pytest.mark.slow  # about 10 s on an idle 2-core machine, 30 s on a busy one
def test_default_main_job_on_a_small_minilm_sample(tmp_path):
    """The real offline path: MiniLM embeddings of bundled pairs, cached, then reused."""
    cache = tmp_path / "cache"
    overrides = ["data.loader.n=60", f"cache_dir={cache}", *TINY]
    a = run_experiment(_compose(overrides), tmp_path / "a", echo=lambda s: None)
    shards = sorted(p.name for p in cache.rglob("*"))
    run_experiment(_compose(overrides), tmp_path / "b", echo=lambda s: None)
    assert a["backbone"] == "minilm" and a["data"] == "hh_rlhf_bundled"
    assert sum(a["n_pairs"].values()) == 60
    assert len(list(cache.iterdir())) == 1
    assert sorted(p.name for p in cache.rglob("*")) == shards  # the second run only read
    # cached embeddings and the same seeds: the same results (compared as written, NaN as null)
    on_disk = [json.loads((tmp_path / d / "results.json").read_text()) for d in "ab"]
    assert on_disk[0]["test"] == on_disk[1]["test"]
    assert (tmp_path / "a" / "reliability.png").exists()

"""The GRPO over-optimisation study: a tiny run end to end with gold tracking, a stopped run
resumed by the same command, the tracking pieces against plain loops, the report built
from synthetic JSON lines, and the real and GPU configs composed from conf/."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

pytest.importorskip("trl")
pytest.importorskip("datasets")

from skebrm.experiments import conf_dir, register_resolvers
from skebrm.experiments.rl import (
    ProxyAgreementWarning,
    answer_rl_overoptimization,
    append_jsonl,
    build_tiny_policy,
    distinct_n,
    format_length_preference,
    format_rl_overoptimization,
    load_rl_runs,
    load_run_metas,
    plot_rl_overoptimization,
    read_jsonl,
    run_rl_overoptimization,
    sequence_log_probs,
    summarise_run,
)

REPO = Path(__file__).resolve().parents[2]


def _compose(overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _write_pairs(path: Path, prompts: list[str]) -> str:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, p in enumerate(prompts):
            fh.write(json.dumps({"id": str(i), "prompt": p, "chosen": "a", "rejected": "b"}) + "\n")
    return str(path)


def _tiny_overrides(tmp_path: Path, **rl) -> list[str]:
    files = [
        _write_pairs(tmp_path / "hh.jsonl.gz", [f"Human: question {i}?" for i in range(12)]),
        _write_pairs(tmp_path / "uf.jsonl.gz", [f"Write {i} words." for i in range(12)]),
    ]
    settings = {
        "rl.agreement.min": 0.0,
        "rl.n_eval_prompts": 4,
        "rl.tracking.every": 1,
        "rl.tracking.batch_size": 4,
        "rl.grpo.max_completion_length": 6,
        "rl.grpo.per_device_train_batch_size": 4,
        "rl.grpo.num_generations": 2,
        "rl.grpo.max_steps": 3,
        "rl.grpo.save_steps": 1,
        "rl.grpo.learning_rate": 1e-3,
        **rl,
    }
    return [
        "experiment=rl_overoptimization",
        "policy=tiny",
        f"cache_dir={tmp_path / 'cache'}",
        "progress=false",
        "torch_threads=1",
        f"bon_data.source.prompt_files=[{files[0]},{files[1]}]",
        "bon_data.source.n_train_prompts=6",
        "bon_data.source.n_eval_prompts=4",
        "bon_data.source.n_train_samples=4",
        "bon_data.source.n_eval_samples=4",
        "bon_data.source.shard_size=2",
        "sampler.policy.max_new_tokens=6",
        "sampler.policy.batch_size=8",
        "~overoptimization.gold.model",
        "+overoptimization.gold.model={_target_:skebrm.experiments.backbones."
        "build_tiny_reward_model,_partial_:true,model_type:bert,seed:1}",
        "overoptimization.gold.max_length=64",
        "~backbone.model",
        "+backbone.model={_target_:skebrm.experiments.backbones.build_tiny_reward_model,"
        "model_type:llama,seed:2}",
        "backbone.max_length=64",
        "overoptimization.pairs_per_prompt=3",
        "overoptimization.eval_pairs_per_prompt=4",
        "calibrator.estimator.max_epochs=2",
        "calibrator.estimator.n_negatives=16",
        "++calibrator.estimator.grid_size=32",
        *[f"{k}={v}" for k, v in settings.items()],
    ]


class _Stopped(RuntimeError):
    pass


def _stop_at(step):
    """A TrainerCallback that dies at ``step`` (after the tracker has recorded it, before
    the trainer saves it), as a killed process would."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Stopped(f"stopped at step {step}")

    return StopAt()


def test_tiny_run_tracks_the_gold_and_resumes_without_duplicates(tmp_path):
    cfg = _compose(_tiny_overrides(tmp_path, **{"rl.grpo.max_steps": 4, "rl.grpo.save_steps": 2}))
    run = tmp_path / "run"
    with pytest.raises(_Stopped, match="stopped at step 3"):
        run_rl_overoptimization(cfg, run, echo=lambda s: None, callbacks=[_stop_at(3)])
    first = read_jsonl(run / "tracking.jsonl")
    assert [r["step"] for r in first] == [0, 1, 2, 3]
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["proxy"] == "base" and meta["beta"] == 0.0
    expected = {"base", "ebrm", "ebrm_minus_1std", "bt_ensemble_mean", "laplace_bt_minus_1std"}
    expected |= {f"pessimistic_b{b:g}" for b in cfg.overoptimization.get("pessimistic_betas", [])}
    assert expected <= set(meta["agreement"])
    assert all(0 <= a["accuracy"] <= 1 for a in meta["agreement"].values())
    # each reward's taste for long and cut-off samples, on the held-out policy samples
    prefs = [meta["gold_length_preference"]]
    prefs += [meta["agreement"][name]["length_preference"] for name in expected]
    for pref in prefs:
        assert pref["longer"] is None or 0 <= pref["longer"] <= 1
        assert pref["n_pairs_longer"] >= 0 and pref["n_pairs_cut_off"] >= 0

    lines = []
    res = run_rl_overoptimization(cfg, run, echo=lines.append)  # the same command
    assert any("resuming from" in line and "checkpoint-2" in line for line in lines)
    records = read_jsonl(run / "tracking.jsonl")
    # step 3 (recorded after the last checkpoint) is cut and recorded again once
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[:3] == first[:3]
    state = json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    logged = [h for h in state["log_history"] if "gold_tracking/gold" in h]
    # the trainer's log (restored from the checkpoint, then continued) has each step once
    assert [h["step"] for h in logged] == [0, 1, 2, 3, 4]
    # TRL's own step metrics stay in the step's regular entry, beside the loss
    regular = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in regular] == [1, 2, 3, 4]
    assert all("rewards/proxy_base/mean" in h and "gold_tracking/gold" not in h for h in regular)
    for r in records:
        assert r["n_completions"] == 4 and len(r["gold_per_prompt"]) == 4
        assert math.isfinite(r["gold"]) and math.isfinite(r["proxy"])
        assert 0 <= r["empty"] <= 1 and 0 <= r["truncated"] <= 1 and 0 <= r["length"] <= 6
        assert math.isclose(r["kl"], np.mean(r["kl_per_prompt"]), abs_tol=1e-5)
    assert abs(records[0]["kl"]) < 1e-4  # before any step the policy is the reference
    assert records[-1]["kl"] != records[0]["kl"]
    assert res["summary"]["final_step"] == 4 and res["summary"]["n_evaluations"] == 5
    assert (run / "rl_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| base, β=0 |" in lines[-2]

    # a finished run only rebuilds its report
    again = run_rl_overoptimization(cfg, run, echo=lambda s: None)
    assert [r["step"] for r in read_jsonl(run / "tracking.jsonl")] == [0, 1, 2, 3, 4]
    assert again["summary"] == res["summary"]


def test_a_dry_run_fits_the_proxies_and_stops_before_grpo(tmp_path):
    # the gate is reported, not enforced: a dry run is how one checks it before the RL
    overrides = {"rl.dry_run": "true", "rl.agreement.min": 1.01, "rl.proxy": "ebrm"}
    cfg = _compose(_tiny_overrides(tmp_path, **overrides))
    lines = []
    res = run_rl_overoptimization(cfg, tmp_path / "run", echo=lines.append)
    assert res["dry_run"] and res["proxy"] == "ebrm" and "summary" not in res
    assert any(
        "dry run: proxy 'ebrm' agrees" in line and "below rl.agreement.min=1.01" in line
        for line in lines
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json"]
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["agreement"]["ebrm"]["accuracy"] == res["agreement"]["ebrm"]["accuracy"]
    gold = meta["gold_length_preference"]
    # 4 held-out prompts x 4 samples: each pair of unequal lengths is counted once
    assert 0 <= gold["n_pairs_longer"] <= 4 * 4 * 3 // 2
    assert "length_preference" in meta["agreement"]["ebrm"]


# TRL 1.16 reads transformers' deprecated model.is_gradient_checkpointing when it scores
# the reference model (beta > 0)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_the_agreement_gate_refuses_or_warns(tmp_path):
    cfg = _compose(_tiny_overrides(tmp_path, **{"rl.agreement.min": 1.01}))
    with pytest.raises(ValueError, match=r"proxy 'base' agrees with the gold RM on .* below"):
        run_rl_overoptimization(cfg, tmp_path / "run", echo=lambda s: None)
    assert not (tmp_path / "run" / "tracking.jsonl").exists()
    cfg = _compose(
        _tiny_overrides(
            tmp_path,
            **{
                "rl.agreement.min": 1.01,
                "rl.agreement.action": "warn",
                "rl.grpo.max_steps": 1,
                "rl.proxy": "ebrm_minus_1std",
                "rl.beta": 0.02,
                "evaluation.plots": "false",
            },
        )
    )
    with pytest.warns(ProxyAgreementWarning, match="rl.agreement.action=warn"):
        res = run_rl_overoptimization(cfg, tmp_path / "run2", echo=lambda s: None)
    assert res["beta"] == 0.02 and res["summary"]["final_step"] == 1
    with pytest.raises(ValueError, match=r"rl.proxy must be one of \["):
        run_rl_overoptimization(
            _compose(_tiny_overrides(tmp_path, **{"rl.proxy": "nope"})),
            tmp_path / "run3",
            echo=lambda s: None,
        )


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_at_a_kl_penalty_the_tracker_shares_trls_reference_model(tmp_path, monkeypatch):
    import skebrm.experiments.rl as rl_module

    loads = []
    load_policy = rl_module.load_policy

    def counted(*args, **kwargs):
        loads.append(1)
        return load_policy(*args, **kwargs)

    monkeypatch.setattr(rl_module, "load_policy", counted)
    cfg = _compose(_tiny_overrides(tmp_path, **{"rl.beta": 0.02, "rl.grpo.max_steps": 2}))
    run_rl_overoptimization(cfg, tmp_path / "run", echo=lambda s: None)
    # the policy only: the reference the KL is tracked against is the one TRL loaded
    assert len(loads) == 1
    records = read_jsonl(tmp_path / "run" / "tracking.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    assert abs(records[0]["kl"]) < 1e-4  # TRL's reference is the initial policy
    assert records[-1]["kl"] != records[0]["kl"]


def test_lora_run_measures_kl_with_the_adapters_disabled(tmp_path):
    pytest.importorskip("peft")
    lora = "{_target_:peft.LoraConfig,r:4,lora_alpha:8,target_modules:[q_proj,v_proj]}"
    cfg = _compose([*_tiny_overrides(tmp_path, **{"rl.grpo.max_steps": 2}), f"rl.peft={lora}"])
    res = run_rl_overoptimization(cfg, tmp_path / "run", echo=lambda s: None)
    records = read_jsonl(tmp_path / "run" / "tracking.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2] and res["summary"]["final_step"] == 2
    assert abs(records[0]["kl"]) < 1e-5  # LoRA starts as the identity
    assert records[-1]["kl"] != records[0]["kl"]
    adapter = tmp_path / "run" / "checkpoints" / "checkpoint-2" / "adapter_config.json"
    assert adapter.is_file()


def test_distinct_n_against_a_count():
    seqs = [[1, 2, 1, 2], [1, 2, 3], []]
    assert distinct_n(seqs, 1) == 3 / 7
    # bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3): 3 distinct of 5
    assert distinct_n(seqs, 2) == 3 / 5
    assert math.isnan(distinct_n([[1]], 2))
    with pytest.raises(ValueError, match="n must be a positive int"):
        distinct_n(seqs, 0)


def test_jsonl_appends_whole_lines_and_drops_a_torn_tail(tmp_path):
    path = tmp_path / "t.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"step": 0, "gold": 1.5})
    append_jsonl(path, {"step": 1, "gold": 2.0})
    assert read_jsonl(path) == [{"gold": 1.5, "step": 0}, {"gold": 2.0, "step": 1}]
    with open(path, "ab") as fh:
        fh.write(b'{"step": 2, "go')  # a write cut short
    assert [r["step"] for r in read_jsonl(path)] == [0, 1]
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="Out of range float values"):
        append_jsonl(path, {"gold": float("nan")})


def test_sequence_log_probs_against_a_token_loop():
    import torch

    model, tok = build_tiny_policy(seed=3)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    cmask = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]])
    got = sequence_log_probs(model, ids, mask, cmask)
    for row in range(2):
        keep = mask[row].bool()
        seq = ids[row][keep][None]
        c = cmask[row][keep]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seq).logits[0], -1)
        want = sum(float(logp[t - 1, seq[0, t]]) for t in range(1, seq.shape[1]) if c[t])
        assert math.isclose(float(got[row]), want, rel_tol=1e-5, abs_tol=1e-5)


class _FakeExtractor:
    """Embeddings (len(prompt), len(completion)) and reward len(completion) of each row."""

    def __init__(self):
        self.rows = []

    def extract(self, rows):
        from types import SimpleNamespace

        self.rows.append(list(rows))
        return SimpleNamespace(
            embeddings=np.array([[len(p), len(c)] for p, c in rows], dtype=float),
            rewards=np.array([len(c) for _, c in rows], dtype=float),
        )


def test_text_reward_follows_trls_convention():
    from skebrm.experiments.rl import TextReward

    ext = _FakeExtractor()
    rm = TextReward(ext, name="gold")
    assert rm.__name__ == "gold"
    got = rm(prompts=[[{"role": "user", "content": "hi"}], ""], completions=["abc", ""])
    assert got == [3.0, None]  # nothing to score in the second row
    assert ext.rows[-1] == [("hi", "abc")]
    proxy = TextReward(ext, lambda Z: Z[:, 0] * 10 + Z[:, 1], name="proxy_base")
    # a prompt_text column (the exact prompt strings) replaces the flattened messages
    got = proxy(
        prompts=[[{"role": "user", "content": "x"}]] * 2,
        completions=["ab", "abcd"],
        prompt_text=["Human: x\n\nAssistant:", "Write."],
    )
    assert got == [10 * len("Human: x\n\nAssistant:") + 2.0, 64.0]
    with pytest.raises(ValueError, match="same length"):
        proxy.score(["a"], ["b", "c"])


def test_gold_tracker_counts_completions_up_to_their_end_token(tmp_path):
    """Scripted generations (one stopped, one truncated, one empty): lengths, flags,
    distinct-n, rewards and the KL of each row against a loop over unpadded tokens."""
    import torch

    from skebrm.experiments.rl import GoldTracker, TextReward

    policy, tok = build_tiny_policy(seed=0)
    ref, _ = build_tiny_policy(seed=1)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    scripted = torch.tensor(
        [[5000, 6000, eos, pad, pad], [7000, 7001, 7000, 7001, 7004], [eos, pad, pad, pad, pad]]
    )

    def generate(input_ids, attention_mask, **kwargs):
        assert kwargs["do_sample"] and kwargs["max_new_tokens"] == 5 and kwargs["top_k"] == 0
        return torch.cat([input_ids, scripted[: len(input_ids)]], dim=1)

    policy.generate = generate
    prompts = ["first prompt", "a longer second prompt here", "third"]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    tracker = GoldTracker(
        prompts,
        messages,
        tok,
        gold=TextReward(_FakeExtractor()),
        proxy=TextReward(_FakeExtractor(), lambda Z: -Z[:, 1]),
        ref_model=ref,
        path=tmp_path / "t.jsonl",
        max_new_tokens=5,
        batch_size=8,
    )
    out = tracker.evaluate(policy)
    assert tracker._last_ids == [[5000, 6000], [7000, 7001, 7000, 7001, 7004], []]
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in tracker._last_ids]
    assert out["length"] == (2 + 5 + 0) / 3
    assert out["truncated"] == 1 / 3 and out["empty"] == 1 / 3
    assert out["distinct_1"] == 5 / 7 and out["distinct_2"] == 4 / 5
    assert out["gold_per_prompt"] == [float(len(t)) for t in texts]
    assert out["proxy"] == -np.mean([len(t) for t in texts])
    kl = []
    for msg, row, n in zip(messages, scripted.tolist(), [3, 5, 1]):
        ids = tok.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
        ids = tok(ids, add_special_tokens=False)["input_ids"] + row[:n]
        seq = torch.tensor([ids])
        diff = 0.0
        with torch.no_grad():
            lp = torch.log_softmax(policy(input_ids=seq).logits[0], -1)
            lq = torch.log_softmax(ref(input_ids=seq).logits[0], -1)
        for t in range(len(ids) - n, len(ids)):
            diff += float(lp[t - 1, ids[t]] - lq[t - 1, ids[t]])
        kl.append(diff)
    np.testing.assert_allclose(out["kl_per_prompt"], kl, rtol=1e-4, atol=1e-4)
    assert math.isclose(out["kl"], np.mean(kl), rel_tol=1e-4, abs_tol=1e-4)
    assert math.isclose(out["kl_se"], np.std(kl, ddof=1) / math.sqrt(3), rel_tol=1e-3)
    assert out["sqrt_kl"] == math.sqrt(max(out["kl"], 0.0))
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        GoldTracker(prompts, messages, tok, gold=None, proxy=None, ref_model=ref, path="x", every=0)
    with pytest.raises(ValueError, match="same length, got 3 and 1"):
        GoldTracker(prompts, messages[:1], tok, gold=None, proxy=None, ref_model=ref, path="x")


def _records(gold: list[float], kl: list[float], rng) -> list[dict]:
    out = []
    for step, (g, k) in enumerate(zip(gold, kl)):
        pp = g + rng.normal(scale=0.1, size=8)
        pp -= pp.mean() - g
        out.append(
            {
                "step": step * 10,
                "gold": g,
                "proxy": 2 * k,
                "kl": k,
                "sqrt_kl": math.sqrt(k),
                "gold_per_prompt": pp.tolist(),
                "proxy_per_prompt": [2 * k] * 8,
                "kl_per_prompt": [k] * 8,
                "length": 20.0 + step,
                "distinct_1": 0.5,
                "distinct_2": 0.9 - 0.1 * step,
                "empty": 0.0,
                "truncated": 0.1,
            }
        )
    return out


def test_report_from_synthetic_json_lines(tmp_path):
    rng = np.random.default_rng(0)
    gold_base = [0.0, 0.5, 0.8, 0.3, -0.2]
    gold_ebrm = [0.0, 0.3, 0.6, 0.9, 1.0]
    kl = [0.0, 1.0, 4.0, 9.0, 16.0]
    for name, gold in (("base", gold_base), ("ebrm_minus_1std", gold_ebrm)):
        folder = tmp_path / "multirun" / f"{name}-beta0.0-seed0"
        folder.mkdir(parents=True)
        agreement = {name: {"accuracy": 0.62}}
        meta = {"proxy": name, "beta": 0.0, "agreement": agreement}
        (folder / "run.json").write_text(json.dumps(meta))
        for r in _records(gold, kl, rng):
            append_jsonl(folder / "tracking.jsonl", r)
    runs = load_rl_runs([tmp_path / "multirun"])
    assert [r["meta"]["proxy"] for r in runs] == ["base", "ebrm_minus_1std"]

    base = summarise_run(runs[0]["records"])
    i = int(np.argmax(gold_base))
    assert base["peak_gold"] == 0.8 and base["peak_step"] == 20 and base["peak_kl"] == 4.0
    assert base["final_gold"] == -0.2 and base["final_step"] == 40 and base["final_kl"] == 16.0
    assert math.isclose(base["drop_from_peak"], 1.0)
    d = np.subtract(
        runs[0]["records"][i]["gold_per_prompt"], runs[0]["records"][-1]["gold_per_prompt"]
    )
    assert math.isclose(base["drop_se"], d.std(ddof=1) / math.sqrt(8))
    # the gold falls while the proxy rises (2 KL: from 8 at the peak to 32 at the end)
    assert base["falls"] and base["proxy_change"] == 24.0 and base["over_optimises"]
    assert base["length_at_peak"] == 22.0 and base["length_at_end"] == 24.0
    assert math.isclose(base["distinct_2_at_peak"], 0.7)
    assert math.isclose(base["distinct_2_at_end"], 0.5)
    ebrm = summarise_run(runs[1]["records"])
    assert ebrm["peak_step"] == 40 and not ebrm["over_optimises"] and ebrm["drop_from_peak"] == 0

    md = format_rl_overoptimization(runs)
    assert "| base, β=0 | 0.620 | 40 | 0.800 | 20 | 4.00 | -0.200 | 1.000 ± " in md
    assert "| ebrm_minus_1std, β=0 |" in md and "22.0 → 24.0" in md
    answer = answer_rl_overoptimization(runs)
    assert answer.startswith("At β = 0: base peaks at gold 0.800 at KL 4.00 (step 20) and falls")
    assert (
        "ebrm_minus_1std peaks higher (gold 1.000) at a larger KL (16.00 nats) and a later "
        "step (40), with no significant fall" in answer
    )
    # a peak later in steps can still be at a smaller KL: each is said separately
    slow = [dict(r, kl=r["kl"] / 8) for r in runs[1]["records"]]
    mixed = answer_rl_overoptimization([runs[0], {**runs[1], "records": slow}])
    assert "peaks higher (gold 1.000) at a smaller KL (2.00 nats) and a later step (40)" in mixed
    lower = [
        dict(r, gold=r["gold"] / 2, gold_per_prompt=[g / 2 for g in r["gold_per_prompt"]])
        for r in runs[0]["records"]
    ]
    both = answer_rl_overoptimization([runs[0], {**runs[1], "records": lower}])
    assert "peaks lower (gold 0.400) at the same KL (4.00 nats) and the same step (20)" in both
    assert "then falls by 0.500 by step 40 while its proxy reward rises by 24.000" in both
    assert answer.startswith(
        "At β = 0: base peaks at gold 0.800 at KL 4.00 (step 20) and falls by 1.000 by step "
        "40 while its proxy reward rises by 24.000 (over-optimisation)"
    )
    # a gold fall with the proxy falling too is the policy moving back, not over-optimisation
    back = [dict(r, proxy=r["gold"]) for r in runs[0]["records"]]
    moved = summarise_run(back)
    assert moved["falls"] and moved["proxy_change"] == -1.0 and not moved["over_optimises"]
    text = answer_rl_overoptimization([{**runs[0], "records": back}, runs[1]])
    assert (
        "(step 20) and falls by 1.000 by step 40, its proxy reward falling too (by 1.000)" in text
    )
    flat = [dict(r, gold=0.1 * r["step"]) for r in runs[0]["records"]]
    none = answer_rl_overoptimization([{**runs[0], "records": flat}])
    assert "no proxy over-optimised" in none and "base 16.00 nats after 40 steps" in none
    png = plot_rl_overoptimization(runs, tmp_path / "rl.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # runs that recorded no length preference give no table
    assert format_length_preference(load_run_metas([tmp_path / "multirun"])) == ""
    with pytest.raises(ValueError, match="a step is recorded twice"):
        summarise_run(runs[0]["records"] + runs[0]["records"][:1])


def test_curves_keep_step_order_when_the_kl_falls_back(tmp_path):
    from skebrm.experiments.rl.report import _curve

    rng = np.random.default_rng(0)
    # the KL rises, then falls back (as a run's can): the curve must not be re-sorted by KL
    records = _records([0.1, 0.3, 0.2, 0.25], [1.0, 9.0, 4.0, 2.0], rng)
    shuffled = [records[i] for i in (2, 0, 3, 1)]
    x, mean, half = _curve(shuffled, "gold")
    np.testing.assert_allclose(x, [1.0, 3.0, 2.0, math.sqrt(2.0)])
    np.testing.assert_allclose(mean, [0.1, 0.3, 0.2, 0.25])
    pp = np.asarray(records[1]["gold_per_prompt"])
    assert math.isclose(half[1], 1.96 * pp.std(ddof=1) / math.sqrt(len(pp)))
    steps, mean_by_step, _ = _curve(shuffled, "gold", x="step")
    np.testing.assert_array_equal(steps, [0, 10, 20, 30])
    np.testing.assert_allclose(mean_by_step, mean)
    with pytest.raises(ValueError, match="x must be 'sqrt_kl' or 'step', got 'kl'"):
        _curve(records, "gold", x="kl")
    run = {"folder": tmp_path, "meta": {"proxy": "base", "beta": 0.0}, "records": records}
    assert plot_rl_overoptimization([run], tmp_path / "rl.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_styles_one_colour_per_proxy_one_dash_per_beta():
    from skebrm.experiments.rl.report import _line_styles

    runs = [
        {"folder": f"{p}-{b}", "meta": {"proxy": p, "beta": b}, "records": []}
        for p, b in (("base", 0.02), ("base", 0.0), ("ebrm", 0.0), ("ebrm", 0.02))
    ]
    styles = _line_styles(runs)
    assert styles[0][0] == styles[1][0] != styles[2][0] == styles[3][0]
    assert styles[1][1] == styles[2][1] == "-" and styles[0][1] == styles[3][1] == "--"


def test_real_and_gpu_configs_compose():
    cfg = _compose(["experiment=rl_overoptimization"])
    assert cfg.task == "rl_overoptimization" and cfg.policy.name == "smollm2"
    assert cfg.sampler.policy.model == "smollm2" and cfg.bon_data.name == "policy"
    assert cfg.rl.beta == 0.0 and cfg.rl.agreement.min == 0.60
    assert cfg.rl.n_eval_prompts >= 64 and cfg.rl.grpo.max_completion_length == 64
    assert 4 <= cfg.rl.grpo.num_generations <= 8 and cfg.rl.grpo.save_steps > 0
    assert cfg.hydra.run.dir.endswith("smollm2/base-beta0.0-seed0")
    assert set(cfg.hydra.sweeper.params["rl.proxy"].split(",")) >= {"base", "ebrm_minus_1std"}
    gpu = _compose(["experiment=rl_overoptimization_gpu"])
    assert gpu.policy.name == "smollm2_1.7b" and gpu.policy.dtype == "bfloat16"
    assert gpu.sampler.name == "vllm" and gpu.sampler.policy.model == gpu.policy.name_or_path
    assert gpu.rl.grpo.use_vllm and gpu.rl.grpo.bf16 and gpu.device == "cuda"
    assert gpu.rl.n_eval_prompts > cfg.rl.n_eval_prompts
    assert gpu.bon_data.source.n_train_prompts > cfg.bon_data.source.n_train_prompts
    assert gpu.rl.grpo.per_device_train_batch_size % gpu.rl.grpo.num_generations == 0
    from omegaconf import OmegaConf
    from trl import GRPOConfig

    from skebrm.experiments.rl import grpo_config

    for c in (cfg, gpu):  # TRL accepts every setting
        grpo = OmegaConf.to_container(c.rl.grpo, resolve=True)
        grpo.pop("use_vllm")  # building vLLM's config needs vllm installed
        args = grpo_config(
            GRPOConfig, {**grpo, "bf16": False}, output_dir="unused", beta=c.rl.beta, use_cpu=True
        )
        assert args.gradient_checkpointing == c.rl.grpo.gradient_checkpointing
        # a constant rate: a run stopped early is the start of the longer run
        assert args.lr_scheduler_type == "constant"


@pytest.mark.parametrize("option", ["smollm2", "smollm2_1.7b", "tiny"])
def test_policy_configs_build(option, tmp_path):
    from hydra.utils import get_method, instantiate

    cfg = _compose(["experiment=rl_overoptimization", f"policy={option}", f"cache_dir={tmp_path}"])
    assert cfg.policy.name == option and cfg.sampler.policy.model == cfg.policy.name_or_path
    load = instantiate(cfg.policy.model, _convert_="all")  # a partial: nothing loads yet
    assert callable(load) and callable(get_method(cfg.policy.model._target_))
    if option != "tiny":
        assert cfg.policy.prepare is None
        return
    folder = instantiate(cfg.policy.prepare)(cfg.policy.name_or_path)
    assert folder == tmp_path / "policies" / "tiny-random-llama"
    model, tok = load()
    assert model.config.model_type == "llama" and "token_type_ids" not in tok.model_input_names
    assert tok.pad_token is not None and tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    ).endswith("assistant: ")


@pytest.mark.slow
def test_cli_multirun_over_proxies_resumes_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "skebrm.experiments.main",
        "-m",
        *_tiny_overrides(tmp_path, **{"rl.grpo.max_steps": 2}),
        "rl.proxy=base,ebrm_minus_1std",
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".")
    assert folders == ["base-beta0.0-seed0", "ebrm_minus_1std-beta0.0-seed0"]
    cmd[cmd.index("rl.grpo.max_steps=2")] = "rl.grpo.max_steps=3"
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = load_rl_runs([sweep])
    assert [r["meta"]["proxy"] for r in runs] == ["base", "ebrm_minus_1std"]
    for run in runs:
        assert [r["step"] for r in run["records"]] == [0, 1, 2, 3]
        assert (run["folder"] / "checkpoints" / "checkpoint-3").is_dir()
    md = format_rl_overoptimization(runs)
    assert "| base, β=0 |" in md and "| ebrm_minus_1std, β=0 |" in md


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.0, 0.02])
def test_grpo_benchmark_runs_on_the_tiny_policy(tmp_path, load_script, beta):
    bench = load_script("benchmarks/bench_grpo.py")
    argv = ["--policy", "tiny", "--steps", "2", "--warmup", "0", "--prompts", "1"]
    argv += ["--generations", "2", "--max-new-tokens", "4", "--out", str(tmp_path)]
    res = bench.main([*argv, "--beta", str(beta)])
    assert len(res["seconds_per_step_all"]) == 2 and len(res["generate_seconds_all"]) == 2
    assert res["step_over_generate"] == res["seconds_per_step"] / res["generate_seconds"]
    # the KL to the reference model is computed (and logged by TRL) only when beta > 0
    assert len(res["kl_logged"]) == (2 if beta > 0 else 0)
    saved = json.loads(next(tmp_path.glob("grpo-*.json")).read_text())
    assert saved["completions_per_step"] == 2 and saved["settings"]["policy"] == "tiny"
    assert saved["settings"]["beta"] == beta


def test_grpo_benchmark_rejects_a_negative_beta(load_script, capsys):
    bench = load_script("benchmarks/bench_grpo.py")
    with pytest.raises(SystemExit):
        bench.main(["--beta", "-0.1"])
    assert "--beta must be >= 0, got -0.1" in capsys.readouterr().err

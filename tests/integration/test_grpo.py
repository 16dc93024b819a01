"""A RefinedRewardModel as a reward function of TRL's GRPOTrainer: two real steps on CPU."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from skebrm import RefinedRewardModel  # noqa: E402
from skebrm.experiments.rl.run import build_tiny_policy  # noqa: E402


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "conversational"])
def test_grpo_trainer_runs_two_steps_with_the_bundle(tiny_bundle_parts, tmp_path, conversational):
    from trl import GRPOConfig, GRPOTrainer

    parts = tiny_bundle_parts
    bundle = RefinedRewardModel(
        parts.model, parts.tokenizer, parts.calibrator, max_length=parts.max_length, penalty=0.5
    )
    calls = []

    def spy(**kwargs):
        calls.append(kwargs)
        return bundle(**kwargs)

    spy.__name__ = bundle.__name__
    prompts = [p["prompt"][-120:] for p in parts.pairs[:4]]
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "topic": ["a", "b", "c", "d"]})
    policy, tok = build_tiny_policy(seed=0)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-4,
        logging_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=policy, reward_funcs=[spy], args=args, train_dataset=dataset, processing_class=tok
    )
    assert trainer.reward_func_names == ["refined_reward"]
    trainer.train()

    assert trainer.state.global_step == 2
    assert calls, "the reward function was never called"
    first = calls[0]
    assert {"prompts", "completions", "completion_ids", "trainer_state", "log_metric"} <= set(first)
    assert first["topic"]  # dataset columns arrive as kwargs
    if conversational:
        assert isinstance(first["prompts"][0], list) and first["prompts"][0][0]["role"] == "user"
        assert isinstance(first["completions"][0], list)
    else:
        assert isinstance(first["completions"][0], str)
    # what TRL received is what the bundle gives for those completions
    got = bundle(**first)
    assert len(got) == len(first["completions"]) and all(math.isfinite(r) for r in got)
    logged = [h for h in trainer.state.log_history if "refined_reward/reward_std" in h]
    assert logged and all(h["refined_reward/reward_std"] > 0 for h in logged)
    assert any("rewards/refined_reward/mean" in h for h in trainer.state.log_history)

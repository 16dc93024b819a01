"""Glue to policy trainers: TRL's reward-function convention (:mod:`skebrm.integrations.trl`)."""

from skebrm.integrations.trl import completion_text, prompt_text, to_rows, trl_reward

__all__ = ["completion_text", "prompt_text", "to_rows", "trl_reward"]

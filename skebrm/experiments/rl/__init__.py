"""Reward hacking under RL: GRPO against each proxy RM, tracked by a gold RM.

``skebrm-experiment experiment=rl_overoptimization`` runs one GRPO run
(:func:`run_rl_overoptimization`); the report over many runs is built from their JSON
lines (:func:`load_rl_runs`, :func:`format_rl_overoptimization`,
:func:`plot_rl_overoptimization`). See ``docs/rl_overoptimization.md`` for the study,
its commands and its cost.
"""

from skebrm.experiments.rl.report import (
    answer_rl_overoptimization,
    format_length_preference,
    format_rl_overoptimization,
    load_rl_runs,
    load_run_metas,
    plot_rl_overoptimization,
    run_label,
    summarise_run,
)
from skebrm.experiments.rl.rewards import TextReward
from skebrm.experiments.rl.run import (
    ProxyAgreementWarning,
    build_tiny_policy,
    fit_rl_proxies,
    grpo_config,
    load_policy,
    run_rl_overoptimization,
    save_tiny_policy,
)
from skebrm.experiments.rl.tracking import (
    GoldTracker,
    append_jsonl,
    distinct_n,
    read_jsonl,
    sequence_log_probs,
)

__all__ = [
    "GoldTracker",
    "ProxyAgreementWarning",
    "TextReward",
    "answer_rl_overoptimization",
    "append_jsonl",
    "build_tiny_policy",
    "distinct_n",
    "fit_rl_proxies",
    "format_length_preference",
    "format_rl_overoptimization",
    "grpo_config",
    "load_policy",
    "load_rl_runs",
    "load_run_metas",
    "plot_rl_overoptimization",
    "read_jsonl",
    "run_label",
    "run_rl_overoptimization",
    "save_tiny_policy",
    "sequence_log_probs",
    "summarise_run",
]

"""Evaluation metrics for reward models: plain functions on arrays.

Conventions
-----------
* A *pair* is scored by the reward of its chosen and of its rejected response. A pair is
  ordered correctly when ``reward_chosen > reward_rejected``; a tie counts one half
  (RewardBench's rule).
* Uncertainty is "higher is less sure". Pair uncertainty is whatever the caller passes,
  for example ``sqrt(std_chosen**2 + std_rejected**2)``, the posterior spread of the
  margin, or the base margin ``−|r_c − r_r|`` (:func:`margin_uncertainty`), the baseline
  every uncertainty has to beat.
* Best-of-k (RewardBench 2): pairs that share a prompt and a chosen response form one
  group of ``k`` responses, scored by whether the chosen beats all ``k − 1`` rejected.
* A preference probability is ``P(chosen ≻ rejected)``. Its calibration is measured on the
  symmetrised sample ``(p, 1) ∪ (1 − p, 0)`` (see :func:`preference_calibration_data`),
  because in preference data the chosen response is, by construction, always the winner.

Plotting helpers import matplotlib lazily and draw on a bare ``Figure`` with the Agg
canvas, so they never touch the global pyplot state.
"""

from __future__ import annotations

from skebrm.metrics import _accuracy
from skebrm.metrics._accuracy import (
    best_of_k_accuracy,
    best_of_k_correct,
    pairwise_accuracy,
    pairwise_correct,
    rewardbench_scores,
)
from skebrm.metrics._best_of_n import (
    BestOfNCurve,
    best_of_n,
    best_of_n_curve,
    best_of_n_per_prompt,
    best_of_n_weights,
    kl_best_of_n,
    plot_best_of_n,
)
from skebrm.metrics._calibration import (
    ReliabilityCurve,
    expected_calibration_error,
    preference_calibration_data,
    preference_probability,
    quadrature_preference_probability,
    reliability_curve,
)
from skebrm.metrics._plots import (
    plot_abstention,
    plot_percent_lines,
    plot_reliability_diagram,
)
from skebrm.metrics._uncertainty import (
    BootstrapResult,
    abstention_accuracy,
    disagreement_auroc,
    margin_uncertainty,
    misorder_auroc,
    paired_bootstrap,
)

# bound here, with their documentation, so that it is found under this module's name
IMPLICIT_SECTION: str = _accuracy.IMPLICIT_SECTION
"""Name of the single section of a dataset whose rows carry no section label."""

REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = _accuracy.REWARDBENCH_EXAMPLE_COUNTS
"""RewardBench's per-subset weights (``rewardbench/constants.py::EXAMPLE_COUNTS``)."""

REWARDBENCH_SUBSET_MAPPING: dict[str, tuple[str, ...]] = _accuracy.REWARDBENCH_SUBSET_MAPPING
"""RewardBench's sections (``rewardbench/constants.py::SUBSET_MAPPING``)."""

__all__ = [
    "IMPLICIT_SECTION",
    "REWARDBENCH_EXAMPLE_COUNTS",
    "REWARDBENCH_SUBSET_MAPPING",
    "BestOfNCurve",
    "BootstrapResult",
    "ReliabilityCurve",
    "abstention_accuracy",
    "best_of_k_accuracy",
    "best_of_k_correct",
    "best_of_n",
    "best_of_n_curve",
    "best_of_n_per_prompt",
    "best_of_n_weights",
    "disagreement_auroc",
    "expected_calibration_error",
    "kl_best_of_n",
    "margin_uncertainty",
    "misorder_auroc",
    "paired_bootstrap",
    "pairwise_accuracy",
    "pairwise_correct",
    "plot_abstention",
    "plot_best_of_n",
    "plot_percent_lines",
    "plot_reliability_diagram",
    "preference_calibration_data",
    "preference_probability",
    "quadrature_preference_probability",
    "reliability_curve",
    "rewardbench_scores",
]

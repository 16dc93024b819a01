"""skebrm: energy-based reward models on top of frozen LLM reward models."""

from skebrm._version import __version__
from skebrm.bradley_terry import BradleyTerryHead, fit_bradley_terry
from skebrm.calibrator import EnergyRewardCalibrator
from skebrm.exceptions import RefinementWarning

__all__ = [
    "BradleyTerryHead",
    "EnergyRewardCalibrator",
    "RefinementWarning",
    "__version__",
    "fit_bradley_terry",
]

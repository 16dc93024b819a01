"""The reward scaler: the one place where RM units and standardised units meet."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RewardScaler"]


@dataclass(frozen=True)
class RewardScaler:
    """``standardised = (reward − mean) / scale``.

    The energy network works in standardised units, in which the training rewards have
    standard deviation ``target_std`` (so the noise scales ``sigmas`` mean the same for
    every reward model). Densities pick up the log-Jacobian: ``log p_RM(r) =
    log p_std((r − mean) / scale) + log_jacobian``.
    """

    mean: float
    scale: float

    @classmethod
    def fit(cls, y: np.ndarray, target_std: float) -> RewardScaler:
        """Scaler that brings ``y`` to mean 0 and standard deviation ``target_std``."""
        y = np.asarray(y, dtype=np.float64)
        return cls(float(np.mean(y)), float(np.std(y)) / float(target_std))

    def transform(self, r) -> np.ndarray:
        """RM units → standardised units."""
        return (np.asarray(r, dtype=np.float64) - self.mean) / self.scale

    def inverse_transform(self, r_s) -> np.ndarray:
        """Standardised units → RM units."""
        return np.asarray(r_s, dtype=np.float64) * self.scale + self.mean

    def scale_spread(self, s) -> np.ndarray:
        """A spread (standard deviation, interval width) in standardised units → RM units."""
        return np.asarray(s, dtype=np.float64) * self.scale

    @property
    def log_jacobian(self) -> float:
        """``log |d standardised / d reward| = −log scale``."""
        return -math.log(self.scale)

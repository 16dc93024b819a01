"""Warnings and errors raised by skebrm."""

from sklearn.exceptions import ConvergenceWarning, NotFittedError

__all__ = ["ConvergenceWarning", "NotFittedError", "RefinementWarning"]


class RefinementWarning(UserWarning):
    """The energy model's refined rewards rank validation pairs worse than the base RM."""

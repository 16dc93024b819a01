"""Warnings and errors raised by skebrm."""

import warnings

from sklearn.exceptions import ConvergenceWarning, NotFittedError

__all__ = [
    "ConvergenceWarning",
    "IneffectiveParameterWarning",
    "ModelIntegrityError",
    "NotFittedError",
    "RefinementWarning",
    "warn_user",
]


class RefinementWarning(UserWarning):
    """The energy model's refined rewards do not rank held-out pairs better than the base RM."""


class ModelIntegrityError(ValueError):
    """A saved model's files are not what was saved (edited, corrupted or incomplete)."""


class IneffectiveParameterWarning(UserWarning):
    """A parameter was set that has no effect with the other parameters."""


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside skebrm and scikit-learn.

    Inside ``Pipeline.fit`` or ``GridSearchCV.fit`` that is the user's call, wherever in
    the library the warning is raised.
    """
    import os
    import sys

    import sklearn

    skip = (
        os.path.dirname(os.path.abspath(__file__)) + os.sep,
        os.path.dirname(os.path.abspath(sklearn.__file__)) + os.sep,
    )
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)

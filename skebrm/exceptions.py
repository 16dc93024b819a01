"""Warnings and errors raised by skebrm."""

import warnings

from sklearn.exceptions import ConvergenceWarning, NotFittedError

__all__ = [
    "BundleMismatchError",
    "ConvergenceWarning",
    "FallbackWarning",
    "GuardPowerWarning",
    "IneffectiveParameterWarning",
    "ModelIntegrityError",
    "NotFittedError",
    "RefinementWarning",
    "VersionMismatchWarning",
    "warn_user",
]


class RefinementWarning(UserWarning):
    """The energy model's refined rewards do not rank held-out pairs better than the base RM."""


class FallbackWarning(UserWarning):
    """A method fell back to its default because metadata it can use was not passed."""


class VersionMismatchWarning(UserWarning):
    """A model saved or pickled by another version of skebrm or scikit-learn was loaded."""


class GuardPowerWarning(RefinementWarning):
    """The guard decided on too few pairs to detect a small gain of the refined rewards."""


class ModelIntegrityError(ValueError):
    """A saved file is not what was saved: edited, corrupted, swapped or incomplete.

    The one error for every artefact skebrm writes (a calibrator, a bundle, a cache;
    :class:`~skebrm.extraction.CacheCorruptError` is its subclass for caches), raised too
    when the parts of a bundle do not belong together (a calibrator fitted on embeddings
    of another reward model or setting).
    """


BundleMismatchError = ModelIntegrityError
"""The former name of :class:`ModelIntegrityError` for bundles, kept as an alias."""


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

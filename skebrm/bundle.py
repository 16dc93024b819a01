"""``RefinedRewardModel``: a reward model, its extraction settings and a fitted calibrator.

The bundle is what a policy trainer or a reward server needs: it runs the frozen Hugging
Face reward model (RM) on ``(prompt, completion)`` rows, keeps the RM's embedding and
reward, and refines the reward with a fitted :class:`~skebrm.EnergyRewardCalibrator`.

On disk (:meth:`RefinedRewardModel.save_pretrained`) a bundle is a folder::

    refined_reward_model.json   format version, settings, fingerprints, file checksums
    reward_model/               the RM and its tokenizer (save_pretrained, safetensors)
    calibrator/                 the calibrator (EnergyRewardCalibrator.save_pretrained)

Nothing in it is a pickle, and loading never unpickles: the RM is built from its
safetensors weights, the calibrator through its own pickle-free format. Saving and
loading live in :mod:`skebrm._bundle_io`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skebrm import _bundle_io
from skebrm._bundle_args import (
    _check_batch_size,
    _check_penalty,
    _check_text_columns,
    _device,
)
from skebrm.calibrator import EnergyRewardCalibrator
from skebrm.exceptions import BundleMismatchError, ModelIntegrityError

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "BundleMismatchError",
    "RefinedRewardModel",
    "RewardScores",
]

BUNDLE_FORMAT_VERSION = _bundle_io.FORMAT_VERSION
# The extractor's record of what determines an embedding; a calibrator fitted on one
# setting is only valid for the same one.
_EMBEDDING_KEYS = (
    "weights_sha256",
    "tokenizer_sha256",
    "head",
    "template",
    "max_length",
    "long_response",
    "pooling",
    "dtype",
)


@dataclass(frozen=True)
class RewardScores:
    """Per-text rewards of :meth:`RefinedRewardModel.score`, in the RM's units.

    Attributes
    ----------
    base_reward : ndarray of shape (n,)
        The frozen RM's own reward.
    refined_reward : ndarray of shape (n,)
        The calibrator's refined reward (mode of ``p(r | e)`` reached from the base reward).
    std : ndarray of shape (n,)
        Standard deviation of ``p(r | e)``: the uncertainty of the reward.
    base_served : bool, default=False
        True when the calibrator's guard rejected refinement (``guard="base"``): the
        served reward is then the base reward alone, without the penalty.
    """

    base_reward: np.ndarray
    refined_reward: np.ndarray
    std: np.ndarray
    base_served: bool = False

    def __len__(self) -> int:
        return int(self.base_reward.shape[0])

    def penalized(self, penalty: float) -> np.ndarray:
        """The served reward: ``refined_reward − penalty · std``, or the base reward when
        the guard rejected refinement (the penalty goes with the refinement)."""
        if self.base_served:
            return self.base_reward.copy()
        return self.refined_reward - penalty * self.std


class RefinedRewardModel:
    """A frozen Hugging Face reward model with a fitted EBRM calibrator on top.

    Each ``(prompt, completion)`` row is formatted and tokenized as the
    :class:`~skebrm.extraction.EmbeddingExtractor` does (template, prompt-first truncation
    to ``max_length``), run through the RM in batches of rows sorted by length under
    ``torch.inference_mode`` on ``device``; the RM's embedding and reward then go through
    the calibrator (on the same device, without gradients). :meth:`score` gives the base
    reward, the refined reward and its standard deviation per row; calling the bundle
    gives ``refined − penalty · std``, so it can be passed to TRL's
    ``GRPOTrainer(reward_funcs=[bundle])``.

    Parameters
    ----------
    reward_model : transformers.PreTrainedModel or nn.Module
        A one-label ``*ForSequenceClassification`` RM (an instance; use
        :meth:`from_pretrained` for a saved bundle). Once every check has passed, it is
        put in eval mode and moved to ``device`` (in place); a refused bundle leaves it
        as it was.
    tokenizer : PreTrainedTokenizerBase
        The RM's tokenizer.
    calibrator : EnergyRewardCalibrator
        Fitted on embeddings of this RM with these extraction settings. Used as it is
        when its ``device`` parameter is ``device``; otherwise the bundle uses a copy set
        to ``device`` (the caller's calibrator is never changed).
    max_length : int, default=512
        Token budget of a formatted row (see ``EmbeddingExtractor``).
    template : {"auto", "chat"} or str, default="auto"
        Row template (see ``EmbeddingExtractor``).
    head : None, str or HeadAdapter, default=None
        Scoring layer of the RM, when the generic rule cannot find it.
    long_response : {"truncate", "error"}, default="truncate"
    dtype : None or {"float32", "bfloat16", "float16", "float64"}, default=None
        None keeps the model's dtype; otherwise the model instance is converted in place
        (as ``nn.Module.to`` does), after every check.
    penalty : float, default=0.0
        λ ≥ 0 of the reward ``refined − λ · std`` returned by ``__call__``.
    batch_size : int, default=16
        Rows per RM forward pass. A float32 RM's embeddings change in their last bits
        with the padding and size of the batch a row is in, and the refinement's
        accept/reject ascent can turn such a change into a visible jump of the refined
        reward (see benchmarks/README.md); ``batch_size=1`` runs every row alone, so a
        row's numbers never depend on the rows scored with it, at some cost in speed.
    device : str or torch.device, default="cpu"
        Where the RM and the calibrator run.
    name : str, default="refined_reward"
        The ``__name__`` TRL logs the reward under.
    fitted_on : dict, optional
        The extractor record of the embeddings the calibrator was fitted on
        (``EmbeddingExtractor.identity()``, or ``ExtractionResult.info["key"]`` of a loaded
        cache). When given, every setting that determines an embedding (weights and
        tokenizer fingerprints, head, template, max_length, pooling, dtype) must match
        this bundle's, else :class:`~skebrm.exceptions.ModelIntegrityError`.

    Attributes
    ----------
    extractor : EmbeddingExtractor
        The fitted extractor that runs the RM.
    extraction_settings : dict
        What the extractor recorded (``EmbeddingExtractor.identity()``).
    __name__ : str
        ``name``.

    Examples
    --------
    >>> from skebrm import RefinedRewardModel  # doctest: +SKIP
    >>> bundle = RefinedRewardModel(model, tokenizer, calibrator, max_length=256)  # doctest: +SKIP
    >>> s = bundle.score(["How do I boil an egg?"], ["Simmer it for 9 minutes."])  # doctest: +SKIP
    >>> s.base_reward, s.refined_reward, s.std  # doctest: +SKIP
    >>> bundle.save_pretrained("ebrm-bundle")  # doctest: +SKIP
    >>> RefinedRewardModel.from_pretrained("ebrm-bundle")(  # doctest: +SKIP
    ...     prompts=["Hi"], completions=["Hello!"])
    """

    def __init__(
        self,
        reward_model,
        tokenizer,
        calibrator: EnergyRewardCalibrator,
        *,
        max_length: int = 512,
        template: str = "auto",
        head=None,
        long_response: str = "truncate",
        dtype: str | None = None,
        penalty: float = 0.0,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        name: str = "refined_reward",
        fitted_on: dict | None = None,
    ):
        from sklearn.utils.validation import check_is_fitted

        from skebrm.extraction import EmbeddingExtractor

        caller = "RefinedRewardModel"
        self.penalty = _check_penalty(penalty, caller)
        self.batch_size = _check_batch_size(batch_size, caller)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{caller}: name must be a non-empty str, got {name!r}.")
        if not isinstance(calibrator, EnergyRewardCalibrator):
            raise TypeError(
                f"{caller}: calibrator must be a fitted EnergyRewardCalibrator, got "
                f"{type(calibrator).__name__}."
            )
        check_is_fitted(calibrator)
        self.device = _device(device)
        self.template = template
        # every check runs before the caller's model or calibrator is changed
        extractor = EmbeddingExtractor(
            reward_model,
            tokenizer,
            max_length=max_length,
            batch_size=self.batch_size,
            template=template,
            head=head,
            long_response=long_response,
            device=str(self.device),
            dtype=dtype,
        )._inspect()
        width = int(extractor.n_features_out_)
        if calibrator.n_features_in_ != width:
            raise ModelIntegrityError(
                f"{caller}: the calibrator was fitted on {calibrator.n_features_in_}-dimensional "
                f"embeddings, but the scoring layer {extractor.head_name_!r} of "
                f"{type(extractor.model_).__name__} takes {width}: it was fitted on another "
                "reward model."
            )
        self.extractor = extractor
        self.extraction_settings = extractor.identity()
        if fitted_on is not None:
            self._check_fitted_on(fitted_on)
        extractor._place()
        self.reward_model = extractor.model_
        self.tokenizer = extractor.tokenizer_
        if calibrator.device != str(self.device):
            calibrator = copy.deepcopy(calibrator).set_params(device=str(self.device))
        self.calibrator = calibrator
        self.__name__ = name
        if self._guard_penalty() not in (None, self.penalty):
            from skebrm.exceptions import RefinementWarning, warn_user

            warn_user(
                f"RefinedRewardModel: the calibrator's guard was decided for the reward "
                f"refined - {self._guard_penalty()} * std, but this bundle serves refined - "
                f"{self.penalty} * std, which no guard evaluated. Call fit_guard on this "
                "bundle to decide it for the reward served.",
                RefinementWarning,
            )

    def _guard_penalty(self) -> float | None:
        """The penalty the calibrator's guard was decided with (None: no guard yet)."""
        scores = getattr(self.calibrator, "guard_scores_", None)
        return None if scores is None else float(scores.get("penalty", 0.0))

    def _check_fitted_on(self, fitted_on) -> None:
        if not isinstance(fitted_on, dict):
            raise TypeError(
                "RefinedRewardModel: fitted_on must be the dict that EmbeddingExtractor."
                f"identity() returns, got {type(fitted_on).__name__}."
            )
        diff = [
            f"{key}: calibrator fitted on {fitted_on[key]!r}, bundle has "
            f"{self.extraction_settings.get(key)!r}"
            for key in _EMBEDDING_KEYS
            if key in fitted_on and fitted_on[key] != self.extraction_settings.get(key)
        ]
        if diff:
            raise ModelIntegrityError(
                "RefinedRewardModel: the calibrator was fitted on embeddings made with other "
                "settings or another reward model than this bundle's (" + "; ".join(diff) + ")."
            )

    def __repr__(self) -> str:
        s = self.extraction_settings
        return (
            f"RefinedRewardModel(model={s['model']!r}, max_length={s['max_length']}, "
            f"template={s['template']!r}, pooling={s['pooling']!r}, dtype={s['dtype']!r}, "
            f"penalty={self.penalty}, device={str(self.device)!r}"
            + (
                ""
                if self._guard_penalty() in (None, self.penalty)
                else f", guard decided at penalty={self._guard_penalty()}"
            )
            + ")"
        )

    # ---------------------------------------------------------------- scoring
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> RewardScores:
        """Base reward, refined reward and standard deviation of each ``(prompt, completion)``.

        Parameters
        ----------
        prompts, completions : list of str, same length
            The RM sees ``template(prompt, completion)``; an empty prompt or completion is
            allowed, both empty is not.

        Returns
        -------
        RewardScores
            float64 arrays of shape ``(len(prompts),)``, RM units.
        """
        prompts, completions = _check_text_columns(
            "RefinedRewardModel.score", prompts=prompts, completions=completions
        )
        if not prompts:
            empty = np.empty(0)
            return RewardScores(empty, empty.copy(), empty.copy())
        # the RM's forward runs under torch.inference_mode (inside the extractor); the
        # calibrator runs under its own no_grad (its cached inference weights must stay
        # ordinary tensors, which inference mode would not give)
        res = self.extractor.extract(list(zip(prompts, completions)))
        refined, std = self._refine(res.embeddings, res.rewards)
        cal = self.calibrator
        return RewardScores(
            base_reward=res.rewards.astype(np.float64),
            refined_reward=np.asarray(refined, dtype=np.float64),
            std=np.asarray(std, dtype=np.float64),
            base_served=cal.guard == "base" and getattr(cal, "refinement_helps_", None) is False,
        )

    def fit_guard(
        self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
    ) -> RefinedRewardModel:
        """Decide the calibrator's guard on preference pairs of the distribution served.

        Runs the RM on ``(prompt, chosen)`` and ``(prompt, rejected)`` of every pair and
        passes the embeddings and rewards to
        :meth:`EnergyRewardCalibrator.fit_guard <skebrm.EnergyRewardCalibrator.fit_guard>`
        with this bundle's ``penalty``: the guard scores the reward served,
        ``refined − penalty · std``, against the base reward. With the calibrator's
        ``guard="base"``, the bundle then serves the base reward alone (no penalty) unless
        the served reward ranks these pairs better. The calibrator is changed in place
        (and saved with the bundle); a bundle built later with another ``penalty`` warns.

        Parameters
        ----------
        prompts, chosen, rejected : list of str, same length
            One preference pair per index: the prompt, the preferred and the other
            completion.

        Returns
        -------
        self : RefinedRewardModel
        """
        caller = "RefinedRewardModel.fit_guard"
        prompts, chosen, rejected = _check_text_columns(
            caller, prompts=prompts, chosen=chosen, rejected=rejected
        )
        if not prompts:
            raise ValueError(f"{caller}: needs at least one pair, got none.")
        rows = [row for p, c, r in zip(prompts, chosen, rejected) for row in ((p, c), (p, r))]
        res = self.extractor.extract(rows)
        n = len(prompts)
        self.calibrator.fit_guard(
            res.embeddings,
            res.rewards,
            pair_id=np.repeat(np.arange(n), 2),
            chosen=np.tile([True, False], n),
            penalty=self.penalty,
        )
        return self

    def _refine(self, embeddings: np.ndarray, rewards: np.ndarray):
        """Refined reward and std in one call of the calibrator (which works inside a
        caller's ``torch.inference_mode``, as a trainer's reward loop runs it)."""
        return self.calibrator.predict(embeddings, base_reward=rewards, return_std=True)

    def __call__(
        self,
        prompts=None,
        completions=None,
        completion_ids=None,
        **kwargs,
    ) -> list[float | None]:
        """``refined − penalty · std`` per completion: a TRL reward function.

        TRL's ``GRPOTrainer`` calls it as ``f(prompts=..., completions=...,
        completion_ids=..., **kwargs)`` with plain strings or conversations (lists of
        ``{"role", "content"}`` messages); see :mod:`skebrm.integrations.trl` for how
        conversations become ``(prompt, completion)`` rows. ``completion_ids`` (the
        policy's token ids) are not used: the RM tokenizes the text itself. When TRL
        passes ``log_metric``, the batch's mean std and mean base reward are logged as
        ``<name>/reward_std`` and ``<name>/base_reward``.

        Returns
        -------
        list of float or None
            One reward per completion; ``None`` (TRL: "no reward") for a row with nothing
            to score (empty prompt and empty completion).
        """
        from skebrm.integrations.trl import trl_reward

        return trl_reward(self, prompts, completions, **kwargs)

    # ------------------------------------------------------------ persistence
    def save_pretrained(
        self, save_directory: str | os.PathLike, *, overwrite: bool = False
    ) -> Path:
        """Write the bundle into a folder, as Hugging Face's ``save_pretrained`` does.

        ``reward_model/`` (the RM and its tokenizer, safetensors), ``calibrator/`` and
        ``refined_reward_model.json`` (format version, settings, fingerprints and the
        SHA-256 of every file); each file is written under a temporary name, then renamed
        into place, the manifest last. A folder that holds a bundle is written again
        (that bundle's files the new one does not write are deleted); other files are
        never deleted, and a non-empty folder that holds no bundle is refused
        (``FileExistsError``) unless ``overwrite=True``.

        Returns
        -------
        Path
            The folder.
        """
        return _bundle_io.save_bundle(self, save_directory, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_directory: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        penalty: float | None = None,
        batch_size: int | None = None,
    ) -> RefinedRewardModel:
        """Load a bundle written by :meth:`save_pretrained`; nothing is unpickled.

        Each file is read once, checked against its recorded SHA-256 as it is read, and
        the RM is built from those bytes. An edited, swapped or added file, a loaded RM
        or tokenizer that is not the recorded one, a calibrator of another width, or
        saved settings that do not build a bundle raise
        :class:`~skebrm.exceptions.ModelIntegrityError`. ``penalty`` and ``batch_size``
        override the saved values.
        """
        return _bundle_io.load_bundle(
            cls, pretrained_directory, device=device, penalty=penalty, batch_size=batch_size
        )

"""``RefinedRewardModel``: a reward model, its extraction settings and a fitted calibrator.

The bundle is what a policy trainer or a reward server needs: it runs the frozen Hugging
Face reward model (RM) on ``(prompt, completion)`` rows, keeps the RM's embedding and
reward, and refines the reward with a fitted :class:`~skebrm.EnergyRewardCalibrator`.

On disk (:meth:`RefinedRewardModel.save_pretrained`) a bundle is a folder::

    refined_reward_model.json   format version, settings, the step served, the debiaser
                                and the step choice (JSON), fingerprints, file checksums
    reward_model/               the RM and its tokenizer (save_pretrained, safetensors)
    calibrator/                 the calibrator (EnergyRewardCalibrator.save_pretrained)

Nothing in it is a pickle, and loading never unpickles: the RM is built from its
safetensors weights, the calibrator through its own pickle-free format. Saving and
loading live in :mod:`skebrm._bundle_io`, the scoring (:class:`RewardScores`, the rows
scored, the guard's pairs, the repr) in :mod:`skebrm._bundle_scoring` and the argument
checks in :mod:`skebrm._bundle_args`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from skebrm import _bundle_io, _bundle_scoring
from skebrm._bundle_args import (
    STEPS,
    _check_batch_size,
    _check_calibrator,
    _check_debiaser,
    _check_fitted_on,
    _check_name,
    _check_penalty,
    _check_step,
    _check_width,
    _device,
)
from skebrm._bundle_scoring import RewardScores
from skebrm.calibrator import EnergyRewardCalibrator
from skebrm.exceptions import BundleMismatchError

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "STEPS",
    "BundleMismatchError",
    "RefinedRewardModel",
    "RewardScores",
]

BUNDLE_FORMAT_VERSION = _bundle_io.FORMAT_VERSION


class RefinedRewardModel:
    """A frozen Hugging Face reward model with a fitted EBRM calibrator on top.

    Each ``(prompt, completion)`` row is formatted and tokenized as the
    :class:`~skebrm.extraction.EmbeddingExtractor` does (template, prompt-first truncation
    to ``max_length``), run through the RM in batches of rows sorted by length under
    ``torch.inference_mode`` on ``device``; the RM's embedding and reward then go through
    the calibrator (on the same device, without gradients). :meth:`score` gives the base
    reward, the refined reward and its standard deviation per row (and the parts of the
    other steps); calling the bundle gives the reward of the step served, by default
    ``refined − penalty · std``, so it can be passed to TRL's
    ``GRPOTrainer(reward_funcs=[bundle])``.

    The step served (``step``; ``length`` is the completion's length in characters,
    ``b̂`` the debiaser's curve and ``α`` its ``alpha``):

    ``"base"``
        The RM's own reward.
    ``"debiased"``
        ``base − α · b̂(length)`` (needs ``debiaser``).
    ``"refined"`` (the default)
        ``refined − penalty · std``; when the calibrator's guard (``guard="base"``)
        rejected refinement and the bundle has no step choice, the base reward alone.
    ``"refined+debiased"``
        ``refined − penalty · std − α · b̂(length)`` (needs ``debiaser``).
    ``"mean"``
        The mean of ``p(r | e)`` ``− penalty · std``.

    Where the calibrator's guard serves the base reward (as for ``"refined"``), the steps
    ``"refined+debiased"`` and ``"mean"`` likewise serve the debiased and the base reward,
    without the penalty (:meth:`RewardScores.served`).

    :meth:`fit_guard` with ``steps=`` chooses the step on preference pairs of the
    distribution served (:func:`skebrm.steps.choose_step`: an exact sign test of each
    candidate against the base reward, Bonferroni over the candidates) and records the
    choice in :attr:`step_choice_`; the choice then decides alone what is served (the
    calibrator's own guard is not applied on top). Setting :attr:`step` by hand drops the
    choice. Debiasing *before* refining (the calibrator refines the debiased reward) needs
    a calibrator fitted on debiased rewards, so it is not a step of one bundle: build a
    bundle whose calibrator was fitted that way (the experiments evaluate it as
    ``lwr+ebrm``).

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
        λ ≥ 0 of the reward ``refined − λ · std`` returned by ``__call__`` (and of the
        steps ``"refined+debiased"`` and ``"mean"``).
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
    debiaser : LengthDebiaser, optional
        A fitted :class:`~skebrm.LengthDebiaser` with ``feature="chars"``, fitted on the
        base rewards of a reference set (inductive) and applied to each completion's
        length in characters; needed by the steps ``"debiased"`` and
        ``"refined+debiased"``. Used as it is (saved with the bundle through its
        ``to_dict``).
    step : {"base", "debiased", "refined", "refined+debiased", "mean"}, default="refined"
        The reward served (see above); :meth:`fit_guard` with ``steps=`` chooses it.

    Attributes
    ----------
    step_choice_ : StepChoice or None
        The choice :meth:`fit_guard` made among candidate steps, and its evidence
        (``step_choice_.reason`` says why); None when the step was not chosen so.
    step_choice_penalty_ : float or None
        The penalty the candidates were scored with when the step was chosen.
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
        debiaser=None,
        step: str = "refined",
    ):
        from skebrm.extraction import EmbeddingExtractor

        caller = "RefinedRewardModel"
        self.penalty = _check_penalty(penalty, caller)
        self.batch_size = _check_batch_size(batch_size, caller)
        name = _check_name(name, caller)
        _check_calibrator(calibrator, caller)
        debiaser = _check_debiaser(debiaser, caller)
        step = _check_step(step, debiaser, caller)
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
        _check_width(calibrator, extractor, caller)
        self.extractor = extractor
        self.extraction_settings = extractor.identity()
        if fitted_on is not None:
            _check_fitted_on(fitted_on, self.extraction_settings)
        extractor._place()
        self.reward_model = extractor.model_
        self.tokenizer = extractor.tokenizer_
        if calibrator.device != str(self.device):
            calibrator = copy.deepcopy(calibrator).set_params(device=str(self.device))
        self.calibrator = calibrator
        self.__name__ = name
        self._debiaser = debiaser
        self._step = step
        self.step_choice_ = None
        self.step_choice_penalty_ = None
        _bundle_scoring.warn_if_unguarded(self)

    def __repr__(self) -> str:
        return _bundle_scoring.bundle_repr(self)

    # ------------------------------------------------------------ the step served
    @property
    def step(self) -> str:
        """The step served: one of :data:`STEPS` (see the class docstring).

        Setting it checks it (a debiased step needs :attr:`debiaser`) and drops
        :attr:`step_choice_`: a step set by hand was not chosen by the guard.
        """
        return self._step

    @step.setter
    def step(self, value: str) -> None:
        self._step = _check_step(value, self._debiaser, "RefinedRewardModel")
        self.step_choice_ = None
        self.step_choice_penalty_ = None

    @property
    def debiaser(self):
        """The fitted :class:`~skebrm.LengthDebiaser` (``feature="chars"``), or None."""
        return self._debiaser

    @debiaser.setter
    def debiaser(self, value) -> None:
        value = _check_debiaser(value, "RefinedRewardModel")
        _check_step(self._step, value, "RefinedRewardModel")
        self._debiaser = value

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
            Float64 arrays of shape ``(len(prompts),)``, RM units (the mean of ``p(r |
            e)`` and, with a debiaser, the debiased reward and the length bias as well);
            its ``step`` is the step served, ``served(penalty)`` its reward.
        """
        return _bundle_scoring.score_texts(self, prompts, completions)

    def fit_guard(
        self,
        prompts: Sequence[str],
        chosen: Sequence[str],
        rejected: Sequence[str],
        *,
        steps=None,
        confidence: float | None = None,
    ) -> RefinedRewardModel:
        """Decide the guard on preference pairs of the distribution served.

        Without ``steps`` (the step ``"refined"`` only): runs the RM on ``(prompt,
        chosen)`` and ``(prompt, rejected)`` of every pair and passes the embeddings and
        rewards to
        :meth:`EnergyRewardCalibrator.fit_guard <skebrm.EnergyRewardCalibrator.fit_guard>`
        with this bundle's ``penalty``: the guard scores the reward served,
        ``refined − penalty · std``, against the base reward. With the calibrator's
        ``guard="base"``, the bundle then serves the base reward alone (no penalty) unless
        the served reward ranks these pairs better. The calibrator is changed in place
        (and saved with the bundle); a bundle built later with another ``penalty`` warns.
        A step choice made before is dropped.

        With ``steps``: runs the RM once on both rows of every pair, computes the reward
        of every candidate step (with this bundle's ``penalty``; the refinement itself,
        whatever the calibrator's guard says) and chooses among them with
        :func:`skebrm.steps.choose_step` against the base reward: a candidate is chosen
        only when an exact one-sided sign test says it ranks these pairs better than the
        base reward (Bonferroni over the candidates), the base reward otherwise. Sets
        :attr:`step` to the chosen step and :attr:`step_choice_` to the choice; both are
        saved with the bundle. The calibrator is not changed.

        Parameters
        ----------
        prompts, chosen, rejected : list of str, same length
            One preference pair per index: the prompt, the preferred and the other
            completion.
        steps : "all" or list of str, optional
            The candidate steps (:data:`STEPS`); ``"base"`` is always among them, as the
            reference. ``"all"``: every step this bundle can compute (the debiased ones
            need :attr:`debiaser`). None: the calibrator's guard of the step
            ``"refined"``, as above (refused when another step is served).
        confidence : float in (0, 1), optional
            Of the step choice (with ``steps`` only): with probability at least
            ``confidence`` the chosen step is the base or ranks better than it. None: the
            calibrator's ``guard_confidence``.

        Returns
        -------
        self : RefinedRewardModel
            The bundle, with its guard (or step choice) re-decided.
        """
        if steps is None:
            if confidence is not None:
                raise ValueError(
                    "RefinedRewardModel.fit_guard: confidence is only used with steps= (the "
                    "calibrator's guard uses its guard_confidence), got "
                    f"confidence={confidence!r} and steps=None."
                )
            _bundle_scoring.fit_guard_pairs(self, prompts, chosen, rejected)
            self.step_choice_ = None
            self.step_choice_penalty_ = None
            return self
        choice = _bundle_scoring.choose_served_step(
            self, prompts, chosen, rejected, steps=steps, confidence=confidence
        )
        self.step = choice.step  # checked; drops any previous choice
        self.step_choice_ = choice
        self.step_choice_penalty_ = self.penalty
        return self

    def __call__(
        self,
        prompts=None,
        completions=None,
        completion_ids=None,
        **kwargs,
    ) -> list[float | None]:
        """The reward of the step served per completion (by default ``refined − penalty ·
        std``): a TRL reward function.

        TRL's ``GRPOTrainer`` calls it as ``f(prompts=..., completions=...,
        completion_ids=..., **kwargs)`` with plain strings or conversations (lists of
        ``{"role", "content"}`` messages); see :mod:`skebrm.integrations.trl` for how
        conversations become ``(prompt, completion)`` rows. ``completion_ids`` (the
        policy's token ids) are not used: the RM tokenizes the text itself. When TRL
        passes ``log_metric``, the batch's mean std and mean base reward are logged as
        ``<name>/reward_std`` and ``<name>/base_reward``.

        Parameters
        ----------
        prompts : list of str or list of list of dict
            The prompt of each completion, as TRL passes them.
        completions : list of str or list of list of dict
            The completions to score, as many as ``prompts``.
        completion_ids : list of list of int, optional
            The policy's token ids of each completion; not used.
        **kwargs
            Further columns TRL passes; ``log_metric``, when present, logs the batch's
            mean std and mean base reward.

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

        Parameters
        ----------
        save_directory : path-like
            The folder to write (created if missing).
        overwrite : bool, default=False
            Write into a non-empty folder that holds no bundle; its other files are kept.

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
        override the saved values. The step served, the debiaser and the step choice are
        restored (a bundle saved before they existed serves the step ``"refined"``).

        Parameters
        ----------
        pretrained_directory : path-like
            A folder written by :meth:`save_pretrained`.
        device : str or torch.device, default="cpu"
            Where the RM and the calibrator run.
        penalty : float, optional
            Overrides the saved ``penalty``.
        batch_size : int, optional
            Overrides the saved ``batch_size``.

        Returns
        -------
        RefinedRewardModel
            The loaded bundle.
        """
        return _bundle_io.load_bundle(
            cls, pretrained_directory, device=device, penalty=penalty, batch_size=batch_size
        )

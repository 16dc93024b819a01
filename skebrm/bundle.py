"""``RefinedRewardModel``: a reward model, its extraction settings and a fitted calibrator.

The bundle is what a policy trainer or a reward server needs: it runs the frozen Hugging
Face reward model (RM) on ``(prompt, completion)`` rows, keeps the RM's embedding and
reward, and refines the reward with a fitted :class:`~skebrm.EnergyRewardCalibrator`.

On disk (:meth:`RefinedRewardModel.save_pretrained`) a bundle is a folder::

    refined_reward_model.json   format version, settings, fingerprints, file checksums
    reward_model/               the RM and its tokenizer (save_pretrained, safetensors)
    calibrator/                 the calibrator (EnergyRewardCalibrator.save_pretrained)

Nothing in it is a pickle, and loading never unpickles: the RM loads with
``use_safetensors=True``, the calibrator through its own pickle-free format.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from skebrm._io import sha256_bytes, sha256_file, staged_directory, write_json_atomic
from skebrm.calibrator import EnergyRewardCalibrator

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "BundleMismatchError",
    "RefinedRewardModel",
    "RewardScores",
]

BUNDLE_FORMAT_VERSION = 1
_CONFIG = "refined_reward_model.json"
_RM_DIR = "reward_model"
_CAL_DIR = "calibrator"
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


class BundleMismatchError(ValueError):
    """The reward model, its settings and the calibrator of a bundle do not belong together."""


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
    """

    base_reward: np.ndarray
    refined_reward: np.ndarray
    std: np.ndarray

    def __len__(self) -> int:
        return int(self.base_reward.shape[0])

    def penalized(self, penalty: float) -> np.ndarray:
        """``refined_reward − penalty · std``."""
        return self.refined_reward - penalty * self.std


def _check_penalty(penalty, caller: str) -> float:
    if (
        not isinstance(penalty, Real)
        or isinstance(penalty, bool)
        or not math.isfinite(penalty)
        or penalty < 0
    ):
        raise ValueError(f"{caller}: penalty must be a finite float >= 0, got {penalty!r}.")
    return float(penalty)


def _check_batch_size(batch_size, caller: str) -> int:
    if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be a positive int, got {batch_size!r}.")
    return int(batch_size)


def _check_texts(values, name: str, caller: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(
            f"{caller}: {name} must be a list of str, got {type(values).__name__}: {values!r:.60}."
        )
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(
                f"{caller}: {name}[{i}] must be a str, got {type(v).__name__}: {v!r:.60}."
            )
    return out


def _check_text_columns(caller: str, **columns) -> list[list[str]]:
    """:func:`_check_texts` on each column, then one check that they are equally long."""

    def join(items):
        items = list(items)
        return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"

    out = [_check_texts(values, name, caller) for name, values in columns.items()]
    lengths = [len(col) for col in out]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"{caller}: {join(columns)} must have the same length, got "
            f"{join(str(n) for n in lengths)}."
        )
    return out


def _device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"RefinedRewardModel: device must be a torch device or its name ('cpu', 'cuda', "
            f"'cuda:1'), got {device!r}."
        ) from exc


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
        :meth:`from_pretrained` for a saved bundle). It is put in eval mode and moved to
        ``device``.
    tokenizer : PreTrainedTokenizerBase
        The RM's tokenizer.
    calibrator : EnergyRewardCalibrator
        Fitted on embeddings of this RM with these extraction settings. Its ``device``
        parameter is set to ``device``.
    max_length : int, default=512
        Token budget of a formatted row (see ``EmbeddingExtractor``).
    template : {"auto", "chat"} or str, default="auto"
        Row template (see ``EmbeddingExtractor``).
    head : None, str or HeadAdapter, default=None
        Scoring layer of the RM, when the generic rule cannot find it.
    long_response : {"truncate", "error"}, default="truncate"
    dtype : None or {"float32", "bfloat16", "float16", "float64"}, default=None
        None keeps the model's dtype; otherwise the model instance is converted in place
        (as ``nn.Module.to`` does).
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
        this bundle's, else :class:`BundleMismatchError`.

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
        self.extractor = EmbeddingExtractor(
            reward_model,
            tokenizer,
            max_length=max_length,
            batch_size=self.batch_size,
            template=template,
            head=head,
            long_response=long_response,
            device=str(self.device),
            dtype=dtype,
        ).fit()
        self.reward_model = self.extractor.model_
        self.tokenizer = self.extractor.tokenizer_
        self.extraction_settings = self.extractor.identity()
        width = int(self.extractor.n_features_out_)
        if calibrator.n_features_in_ != width:
            raise BundleMismatchError(
                f"{caller}: the calibrator was fitted on {calibrator.n_features_in_}-dimensional "
                f"embeddings, but the scoring layer {self.extractor.head_name_!r} of "
                f"{type(self.reward_model).__name__} takes {width}: it was fitted on another "
                "reward model."
            )
        if fitted_on is not None:
            self._check_fitted_on(fitted_on)
        if calibrator.device != str(self.device):
            calibrator.set_params(device=str(self.device))
        self.calibrator = calibrator
        self.__name__ = name

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
            raise BundleMismatchError(
                "RefinedRewardModel: the calibrator was fitted on embeddings made with other "
                "settings or another reward model than this bundle's (" + "; ".join(diff) + ")."
            )

    def __repr__(self) -> str:
        s = self.extraction_settings
        return (
            f"RefinedRewardModel(model={s['model']!r}, max_length={s['max_length']}, "
            f"template={s['template']!r}, pooling={s['pooling']!r}, dtype={s['dtype']!r}, "
            f"penalty={self.penalty}, device={str(self.device)!r})"
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
        return RewardScores(
            base_reward=res.rewards.astype(np.float64),
            refined_reward=np.asarray(refined, dtype=np.float64),
            std=np.asarray(std, dtype=np.float64),
        )

    def fit_guard(
        self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
    ) -> RefinedRewardModel:
        """Decide the calibrator's guard on preference pairs of the distribution served.

        Runs the RM on ``(prompt, chosen)`` and ``(prompt, rejected)`` of every pair and
        passes the embeddings and rewards to
        :meth:`EnergyRewardCalibrator.fit_guard <skebrm.EnergyRewardCalibrator.fit_guard>`:
        with the calibrator's ``guard="base"``, the bundle then returns the base reward
        (refined = base) unless refinement ranks these pairs better. The calibrator is
        changed in place (and saved with the bundle).

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
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the bundle to a folder (replaced whole and atomically if it exists).

        The RM and its tokenizer go to ``reward_model/`` (safetensors), the calibrator to
        ``calibrator/`` (its own ``save_pretrained``), and ``refined_reward_model.json``
        records the format version, the settings, the RM's weights and tokenizer
        fingerprints and the SHA-256 of every file.

        Returns
        -------
        Path
            The folder.
        """
        from skebrm import __version__

        target = Path(save_directory)
        with staged_directory(target) as tmp:
            # safetensors is save_pretrained's only format in transformers 5 and its
            # default since 4.35; checked below
            self.reward_model.save_pretrained(tmp / _RM_DIR)
            self.tokenizer.save_pretrained(tmp / _RM_DIR)
            if not any((tmp / _RM_DIR).glob("*.safetensors")):
                raise RuntimeError(
                    "RefinedRewardModel.save_pretrained: the reward model was not saved as "
                    "safetensors; upgrade transformers (>= 4.35)."
                )
            self.calibrator.save_pretrained(tmp / _CAL_DIR)
            files = {
                p.relative_to(tmp).as_posix(): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            config = {
                "format": "skebrm.RefinedRewardModel",
                "format_version": BUNDLE_FORMAT_VERSION,
                "skebrm_version": __version__,
                "penalty": self.penalty,
                "batch_size": self.batch_size,
                "name": self.__name__,
                "template": self.template,
                "extraction": dict(self.extraction_settings),
                "embedding_dim": int(self.extractor.n_features_out_),
                "files": files,
            }
            config["config_sha256"] = _config_digest(config)
            write_json_atomic(tmp / _CONFIG, config)
        return target

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

        The config must match its own SHA-256, every file the SHA-256 recorded at save
        time, and the loaded RM's weights and tokenizer the recorded fingerprints; any
        difference (a file edited or swapped after saving) raises
        :class:`BundleMismatchError`, and so does a calibrator whose embedding width is
        not the RM's.

        Parameters
        ----------
        pretrained_directory : str or path-like
        device : str or torch.device, default="cpu"
        penalty, batch_size : optional
            Override the saved values.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from skebrm.extraction import HeadAdapter

        caller = "RefinedRewardModel.from_pretrained"
        folder = Path(pretrained_directory)
        config = _read_config(folder, caller)
        _verify_files(folder, config["files"], caller)
        settings = config["extraction"]
        dtype = settings["dtype"]
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                folder / _RM_DIR,
                dtype=getattr(torch, dtype),
                use_safetensors=True,
                trust_remote_code=False,
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(folder / _RM_DIR, trust_remote_code=False)
        calibrator = EnergyRewardCalibrator.from_pretrained(folder / _CAL_DIR, device=str(device))
        bundle = cls(
            model,
            tokenizer,
            calibrator,
            max_length=settings["max_length"],
            template=config["template"],
            head=HeadAdapter(settings["head"], pooling=settings["pooling"]),
            long_response=settings["long_response"],
            dtype=dtype,
            penalty=config["penalty"] if penalty is None else penalty,
            batch_size=config["batch_size"] if batch_size is None else batch_size,
            device=device,
            name=config["name"],
        )
        diff = [
            f"{key}: saved {settings.get(key)!r}, loaded {bundle.extraction_settings.get(key)!r}"
            for key in _EMBEDDING_KEYS
            if settings.get(key) != bundle.extraction_settings.get(key)
        ]
        if diff:
            raise BundleMismatchError(
                f"{caller}: the reward model in {str(folder / _RM_DIR)!r} is not the one the "
                "bundle was saved with (" + "; ".join(diff) + "); its calibrator does not "
                "apply to it."
            )
        return bundle


def _read_config(folder: Path, caller: str) -> dict:
    path = folder / _CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{caller}: {str(folder)!r} is not a saved RefinedRewardModel (no {_CONFIG}); "
            "write one with RefinedRewardModel.save_pretrained."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleMismatchError(f"{caller}: {str(path)!r} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict) or config.get("format") != "skebrm.RefinedRewardModel":
        raise BundleMismatchError(f"{caller}: {str(path)!r} is not a RefinedRewardModel config.")
    version = config.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleMismatchError(
            f"{caller}: {str(path)!r} has format_version {version!r}; this skebrm reads "
            f"format_version {BUNDLE_FORMAT_VERSION} (saved by skebrm "
            f"{config.get('skebrm_version')!r})."
        )
    missing = [
        k
        for k in ("penalty", "batch_size", "name", "template", "extraction", "files")
        if k not in config
    ]
    if missing:
        raise BundleMismatchError(f"{caller}: {str(path)!r} lacks the field(s) {missing}.")
    if config.get("config_sha256") != _config_digest(config):
        raise BundleMismatchError(
            f"{caller}: {str(path)!r} was edited after saving (its content does not match "
            "its config_sha256); pass penalty= or batch_size= to from_pretrained to change "
            "those, or save the bundle again."
        )
    return config


def _config_digest(config: dict) -> str:
    """SHA-256 of the config's canonical JSON, without its own digest."""
    body = {k: v for k, v in config.items() if k != "config_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, allow_nan=False).encode("utf-8"))


def _verify_files(folder: Path, files: dict, caller: str) -> None:
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != _CONFIG
    }
    extra = sorted(on_disk - set(files))
    if extra:
        raise BundleMismatchError(
            f"{caller}: {str(folder)!r} holds files that were not saved with the bundle: "
            f"{extra}. Remove them or save the bundle again."
        )
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            raise BundleMismatchError(f"{caller}: the bundle file {rel!r} is missing.")
        if sha256_file(path) != digest:
            raise BundleMismatchError(
                f"{caller}: the bundle file {rel!r} does not match the SHA-256 recorded in "
                f"{_CONFIG}: it was changed after saving."
            )

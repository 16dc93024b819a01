"""Saving and loading a fitted ``EnergyRewardCalibrator`` without pickle.

Format (``format_version`` 2), a folder with two files:

``calibrator.json``
    A manifest (:mod:`skebrm._manifest`): ``format``, ``format_version``,
    ``skebrm_version``; ``params`` (the constructor parameters); ``fitted`` (the fitted
    scalars, history, grid, reward scaler and the network's layout); ``files`` (the
    weights file's name and SHA-256); and ``content_sha256``, the SHA-256 of the
    canonical JSON of everything else.
``calibrator-<first 16 hex digits of its SHA-256>.safetensors``
    The network's ``state_dict`` (CPU tensors).

Saving writes the weights under their content-addressed name, then the JSON (each to a
temporary name, then renamed), then deletes weights files the JSON no longer names: at
every moment the folder holds one complete model, the old or the new. Loading reads JSON
and safetensors only (never pickle), reads each file once and checks the bytes it then
parses against their checksums, and refuses a file edited after saving, or a consistent
forgery that does not build a network (:class:`~skebrm.exceptions.ModelIntegrityError`).
The checksums catch edits and corruption; they are not a signature against a deliberate
forger, who can recompute them. Format 1 (the weights named under ``weights``) still
loads.

``pickle`` and ``joblib`` go through the same state: the constructor parameters, the
fitted JSON and the weights as numpy arrays (as skorch does, the module's class is not
pickled), so a model pickled from CUDA loads on CPU.

:class:`PersistenceMixin` holds the estimator's methods for both (``save_pretrained``,
``from_pretrained``, ``__getstate__`` and ``__setstate__``), with the device fallback they
share.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from skebrm._io import sha256_bytes, write_bytes_atomic
from skebrm._manifest import canonical, read_manifest, read_payload, write_manifest
from skebrm._params import check_version
from skebrm._posterior import NETWORKS, available_device, build_network
from skebrm.exceptions import ModelIntegrityError

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "PersistenceMixin",
    "construct",
    "document",
    "load_document",
    "restore",
    "save_document",
]

_NAME = "EnergyRewardCalibrator"
FORMAT = f"skebrm.{_NAME}"
FORMAT_VERSION = 2
CONFIG_NAME = "calibrator.json"
_WEIGHTS_RE = re.compile(r"^calibrator-[0-9a-f]{16}\.safetensors$")
_NETS = NETWORKS  # the one network factory is skebrm._posterior.build_network
_canonical = canonical
_BROKEN = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


def jsonable_params(params: dict) -> dict:
    """Constructor parameters as JSON values (tuples → lists; a RandomState → None)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, torch.device):
            value = str(value)
        elif isinstance(value, np.random.RandomState):
            value = None  # a generator's state is not a parameter one can save
        elif isinstance(value, (tuple, list, np.ndarray)):
            value = [v.item() if isinstance(v, np.generic) else v for v in value]
        elif isinstance(value, np.generic):
            value = value.item()
        out[name] = value
    return out


def module_spec(module: torch.nn.Module) -> dict:
    name = type(module).__name__
    if name not in _NETS:
        raise TypeError(f"cannot save an energy network of type {name}.")
    return {"class": name, "config": module.config()}


def build_module(spec: dict) -> torch.nn.Module:
    """The energy network a saved ``spec`` describes (class name and constructor config).

    A spec that does not build one (an unknown class, a config its constructor refuses)
    raises :class:`ModelIntegrityError`.
    """
    cls = _NETS.get(spec.get("class")) if isinstance(spec, dict) else None
    if cls is None:
        name = spec.get("class") if isinstance(spec, dict) else spec
        raise ModelIntegrityError(
            f"unknown energy network {name!r}; expected one of {sorted(_NETS)}."
        )
    try:
        return build_network(spec)
    except _BROKEN as exc:
        raise ModelIntegrityError(
            f"the saved {spec['class']} config {spec.get('config')!r:.200} does not build a "
            f"network ({type(exc).__name__}: {exc}); the file was not written by "
            "save_pretrained or was edited."
        ) from exc


def construct(cls, params: dict, where: str):
    """``cls(**params)`` with its parameters validated, for saved parameters.

    Saved parameters that the estimator refuses (an unknown name, a value its constraints
    reject) raise :class:`ModelIntegrityError`: the file was edited or not written by
    this estimator's ``save_pretrained``.
    """
    try:
        est = cls(**params)
        est._validate_params()
    except (TypeError, ValueError) as exc:
        raise ModelIntegrityError(
            f"{where}: the saved parameters do not make a {cls.__name__} "
            f"({type(exc).__name__}: {exc}); the file was not written by save_pretrained "
            "or was edited."
        ) from exc
    return est


def state_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict as contiguous CPU numpy arrays."""
    return {
        k: np.ascontiguousarray(v.detach().to("cpu").numpy())
        for k, v in module.state_dict().items()
    }


def module_from_arrays(spec: dict, arrays: dict) -> torch.nn.Module:
    """Build the network of ``spec`` and load ``arrays`` into it (eval mode, no grad).

    Weights that do not fit the network (another width, missing or extra tensors) raise
    :class:`ModelIntegrityError`.
    """
    module = build_module(spec)
    try:
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    except _BROKEN as exc:
        raise ModelIntegrityError(
            f"the saved weights do not fit the saved {spec['class']} layout ({exc}); the "
            "files were not written together by save_pretrained."
        ) from exc
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def save_document(directory, doc: dict, module: torch.nn.Module) -> Path:
    """Write ``doc`` (params + fitted) and the module's weights into ``directory``."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = save(state_arrays(module))
    digest = sha256_bytes(blob)
    weights = f"calibrator-{digest[:16]}.safetensors"
    write_bytes_atomic(directory / weights, blob)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **doc, "files": {weights: digest}}
    write_manifest(directory / CONFIG_NAME, doc)
    for old in directory.glob("calibrator-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)
    return directory


def load_document(directory) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a saved calibrator: ``(doc, weights as numpy arrays)``.

    Each file is read once; the bytes parsed are the bytes checked.
    """
    from safetensors.numpy import load

    directory = Path(directory)
    path = directory / CONFIG_NAME
    where = "EnergyRewardCalibrator.from_pretrained"
    doc = read_manifest(
        path,
        format=FORMAT,
        versions=(1, FORMAT_VERSION),
        where=where,
        missing=(
            f"{where}: no {CONFIG_NAME} in {str(directory)!r}; pass a folder written by "
            "EnergyRewardCalibrator.save_pretrained."
        ),
        hint=" Save the model again.",
    )
    if doc["format_version"] == 1:  # the weights were named under "weights"
        weights = doc.get("weights")
        files = {weights.get("file"): weights.get("sha256")} if isinstance(weights, dict) else {}
    else:
        files = doc.get("files", {})
    if len(files) != 1 or not all(
        isinstance(n, str) and _WEIGHTS_RE.match(n) and isinstance(d, str) for n, d in files.items()
    ):
        raise ModelIntegrityError(
            f"{where}: {str(path)!r} names an invalid weights file {sorted(files, key=str)!r}."
        )
    for key in ("params", "fitted"):
        if not isinstance(doc.get(key), dict):
            raise ModelIntegrityError(f"{where}: {str(path)!r} has no {key!r} table.")
    ((name, digest),) = files.items()
    blob = read_payload(directory / name, digest, where=where)
    try:
        arrays = load(bytes(blob))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelIntegrityError(
            f"{where}: the weights file {str(directory / name)!r} is not a safetensors file "
            f"({exc})."
        ) from exc
    return doc, arrays


# fitted attributes stored as JSON values as they are
_FITTED = (
    "n_features_in_",
    "n_pairs_",
    "n_pairs_dropped_",
    "history_",
    "best_epoch_",
    "refinement_helps_",
    "guard_scores_",
    "dropout_",
    "device_",
)


def document(est) -> dict:
    """The JSON part of a fitted calibrator: version, parameters, fitted state."""
    from skebrm import __version__

    post = est.posterior_
    fitted = {name: getattr(est, name) for name in _FITTED}
    fitted["trusted_range_"] = list(est.trusted_range_)
    if hasattr(est, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(v) for v in est.feature_names_in_]
    fitted["posterior"] = {
        "scaler": {"mean": post.scaler.mean, "scale": post.scaler.scale},
        "grid_low": post.grid_low,
        "grid_width": post.grid_width,
        "grid_size": post.grid_size,
        "trusted": list(post.trusted),
        "module": module_spec(est.module_),
    }
    return {
        "skebrm_version": __version__,
        "params": jsonable_params(est.get_params(deep=False)),
        "fitted": fitted,
    }


def restore(est, doc: dict, arrays: dict) -> None:
    """Set ``est``'s fitted state from :func:`document` output and the weights.

    A document whose fitted state does not build a model raises
    :class:`ModelIntegrityError`.
    """
    try:
        _restore(est, doc, arrays)
    except ModelIntegrityError:
        raise
    except _BROKEN as exc:
        raise ModelIntegrityError(
            f"{type(est).__name__}: the saved fitted state does not make a model "
            f"({type(exc).__name__}: {exc}); it was not written by save_pretrained or was "
            "edited."
        ) from exc


def _restore(est, doc: dict, arrays: dict) -> None:
    from skebrm._posterior import EnergyPosterior
    from skebrm._scaling import RewardScaler

    fitted = dict(doc["fitted"])
    spec = fitted.pop("posterior")
    module = module_from_arrays(spec["module"], arrays)
    scaler = RewardScaler(float(spec["scaler"]["mean"]), float(spec["scaler"]["scale"]))
    post = EnergyPosterior(
        module,
        scaler,
        grid_low=spec["grid_low"],
        grid_width=spec["grid_width"],
        grid_size=spec["grid_size"],
        trusted=tuple(spec["trusted"]),
    )
    if "feature_names_in_" in fitted:
        fitted["feature_names_in_"] = np.asarray(fitted["feature_names_in_"], dtype=object)
    fitted["trusted_range_"] = tuple(fitted["trusted_range_"])
    est._set_fitted(
        module_=module,
        posterior_=post,
        reward_mean_=scaler.mean,
        reward_scale_=scaler.scale,
        grid_=post.grid,
        **fitted,
    )


class PersistenceMixin:
    """The estimator's saving, loading and pickling, all through :func:`document`.

    Mixed into :class:`~skebrm.EnergyRewardCalibrator`, which provides ``module_``,
    ``posterior_``, ``get_params`` and ``_set_fitted``.
    """

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save the fitted estimator to ``directory`` without pickle.

        Writes ``calibrator.json`` (constructor parameters, fitted scalars, grid, package
        and format versions and checksums) and a safetensors file of the network's
        weights (CPU tensors), each to a temporary name first, so the folder always holds
        one complete model. :meth:`from_pretrained` loads it; a file edited after saving
        is refused.

        Parameters
        ----------
        directory : path-like
            The folder to write (created if missing).

        Returns
        -------
        pathlib.Path
            ``directory``.
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)
        return save_document(directory, document(self), self.module_)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device=None):
        """Load an estimator written by :meth:`save_pretrained` (never unpickles).

        Parameters
        ----------
        directory : path-like
            A folder written by :meth:`save_pretrained`.
        device : str or torch.device, optional
            Overrides the saved ``device`` parameter. By default the saved one is kept
            when it can run here; a CUDA device on a machine without CUDA becomes
            ``"cpu"`` (with a warning), as when unpickling. Predictions after a round
            trip are bit-identical on the same device and dtype. A model saved by another
            version of skebrm loads with a
            :class:`~skebrm.exceptions.VersionMismatchWarning`.

        Returns
        -------
        EnergyRewardCalibrator
            The fitted estimator.
        """
        doc, arrays = load_document(directory)
        where = f"{_NAME}.from_pretrained"
        check_version("skebrm", doc.get("skebrm_version"), _NAME, where)
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["params"].items()}
        if device is not None:
            params["device"] = device
        else:
            params["device"] = available_device(params.get("device", "auto"), where)
        est = construct(cls, params, where)
        restore(est, doc, arrays)
        return est

    def __getstate__(self):
        import sklearn

        state = {"_sklearn_version": sklearn.__version__}
        state["params"] = self.get_params(deep=False)
        if hasattr(self, "posterior_"):
            state["document"] = document(self)
            state["weights"] = state_arrays(self.module_)
        return state

    def __setstate__(self, state):
        if "params" not in state:  # a plain dict state (e.g. from an older version)
            self.__dict__.update(state)
            return
        where = f"{_NAME} (unpickled)"
        check_version("scikit-learn", state.get("_sklearn_version"), _NAME, where)
        check_version("skebrm", state.get("document", {}).get("skebrm_version"), _NAME, where)
        for name, value in state["params"].items():
            setattr(self, name, value)
        self.device = available_device(self.device, where)
        if "document" in state:
            restore(self, state["document"], state["weights"])

"""Saving and loading a fitted ``EnergyRewardCalibrator`` without pickle.

Format (``format_version`` 1), a folder with two files:

``calibrator.json``
    ``format``, ``format_version``, ``skebrm_version``; ``params`` (the constructor
    parameters); ``fitted`` (the fitted scalars, history, grid, reward scaler and the
    network's layout); ``weights`` (the weights file's name and SHA-256); and
    ``content_sha256``, the SHA-256 of the canonical JSON of everything else.
``calibrator-<first 16 hex digits of its SHA-256>.safetensors``
    The network's ``state_dict`` (CPU tensors).

Saving writes the weights under their content-addressed name, then the JSON (each to a
temporary name, then renamed), then deletes weights files the JSON no longer names: at
every moment the folder holds one complete model, the old or the new. Loading reads JSON
and safetensors only (never pickle), checks both checksums and refuses a file edited after
saving (:class:`~skebrm.exceptions.ModelIntegrityError`). The checksums catch edits and
corruption; they are not a signature against a deliberate forger, who can recompute them.

``pickle`` and ``joblib`` go through the same state: the constructor parameters, the
fitted JSON and the weights as numpy arrays (as skorch does, the module's class is not
pickled), so a model pickled from CUDA loads on CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from skebrm._io import sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic
from skebrm.energy import BasisEnergyNet, EnergyNet
from skebrm.exceptions import ModelIntegrityError

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "document",
    "load_document",
    "restore",
    "save_document",
]

FORMAT = "skebrm.EnergyRewardCalibrator"
FORMAT_VERSION = 1
CONFIG_NAME = "calibrator.json"
_WEIGHTS_RE = re.compile(r"^calibrator-[0-9a-f]{16}\.safetensors$")
_NETS = {"EnergyNet": EnergyNet, "BasisEnergyNet": BasisEnergyNet}
_MAX_JSON_BYTES = 64 << 20


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


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
    cls = _NETS.get(spec.get("class"))
    if cls is None:
        raise ModelIntegrityError(
            f"unknown energy network {spec.get('class')!r}; expected one of {sorted(_NETS)}."
        )
    return cls(**spec["config"])


def state_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state dict as contiguous CPU numpy arrays."""
    return {
        k: np.ascontiguousarray(v.detach().to("cpu").numpy())
        for k, v in module.state_dict().items()
    }


def module_from_arrays(spec: dict, arrays: dict) -> torch.nn.Module:
    module = build_module(spec)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
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
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **doc,
        "weights": {"file": weights, "sha256": digest},
    }
    doc["content_sha256"] = sha256_bytes(_canonical(doc))
    write_json_atomic(directory / CONFIG_NAME, doc)
    for old in directory.glob("calibrator-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)
    return directory


def load_document(directory) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a saved calibrator: ``(doc, weights as numpy arrays)``."""
    from safetensors.numpy import load

    directory = Path(directory)
    path = directory / CONFIG_NAME
    where = "EnergyRewardCalibrator.from_pretrained"
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: no {CONFIG_NAME} in {str(directory)!r}; pass a folder written by "
            "EnergyRewardCalibrator.save_pretrained."
        )
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise ModelIntegrityError(f"{where}: {str(path)!r} is larger than any saved calibrator.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"{where}: {str(path)!r} is not valid JSON ({exc}).") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelIntegrityError(
            f"{where}: {str(path)!r} is not a saved EnergyRewardCalibrator (format "
            f"{doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r})."
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelIntegrityError(
            f"{where}: {str(path)!r} has format_version {version!r}; this skebrm reads up to "
            f"{FORMAT_VERSION}. Upgrade skebrm to load it."
        )
    recorded = doc.get("content_sha256")
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    if recorded != sha256_bytes(_canonical(body)):
        raise ModelIntegrityError(
            f"{where}: {str(path)!r} was edited after saving (its content no longer matches "
            "its content_sha256); refusing to load it. Save the model again."
        )
    weights = doc.get("weights", {})
    name = weights.get("file", "")
    if not isinstance(name, str) or not _WEIGHTS_RE.match(name):
        raise ModelIntegrityError(f"{where}: {str(path)!r} names an invalid weights file {name!r}.")
    wpath = directory / name
    if not wpath.is_file():
        raise ModelIntegrityError(f"{where}: the weights file {str(wpath)!r} is missing.")
    if sha256_file(wpath) != weights.get("sha256"):
        raise ModelIntegrityError(
            f"{where}: the weights file {str(wpath)!r} was modified after saving (SHA-256 "
            "differs from the one in calibrator.json); refusing to load it."
        )
    return doc, load(wpath.read_bytes())


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
    """Set ``est``'s fitted state from :func:`document` output and the weights."""
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

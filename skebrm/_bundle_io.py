"""Saving and loading a :class:`~skebrm.RefinedRewardModel` (a folder; never a pickle).

Layout::

    refined_reward_model.json   the manifest (:mod:`skebrm._manifest`): settings, the
                                extractor's record, the step served, the debiaser
                                (``LengthDebiaser.to_dict``), the step choice
                                (``StepChoice.to_dict``) and the SHA-256 of every file below
    reward_model/               the RM and its tokenizer (save_pretrained, safetensors)
    calibrator/                 the calibrator (EnergyRewardCalibrator.save_pretrained)

Saving writes *into* the folder, as Hugging Face's ``save_pretrained`` does: the parts are
first written to a hidden staging folder inside it, then each file is renamed into place
(atomically), then the manifest; files of a previous bundle that the new one does not
write are deleted last. Other files in the folder are never deleted. A non-empty folder
that is not a bundle is refused unless ``overwrite=True`` (its files are then kept beside
the bundle's); files that are not the bundle's inside ``reward_model/`` or
``calibrator/`` are always refused, since they would change what loads.

Loading reads every file once: the RM's weights into memory, hashed as they are read and
then parsed from the same bytes, and the small files (configs, tokenizer, calibrator) into
a private temporary folder that the loaders then read. The RM is built from the verified
weights, so the bytes that were checked are the bytes that run, and the weights are not
hashed again (the extractor's fingerprint is the verified one of the manifest).

Format versions: 1 (``config_sha256`` over ``json.dumps``), 2 (the checksummed manifest),
3 (2 with ``step``, ``debiaser``, ``step_choice`` and ``step_choice_penalty``). Bundles of
versions 1 and 2 load, serving the step ``"refined"`` without a debiaser or a choice.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from pathlib import Path

import torch

from skebrm._bundle_scoring import DEFER_GUARD_WARNING, warn_if_unguarded
from skebrm._io import (
    _STAGING,
    install_files,
    remove_stale,
    sha256_file,
    staged_files,
    staging_folder,
)
from skebrm._manifest import check_relative_path, read_manifest, read_payload, write_manifest
from skebrm.exceptions import ModelIntegrityError

__all__ = ["CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "load_bundle", "save_bundle"]

FORMAT = "skebrm.RefinedRewardModel"
FORMAT_VERSION = 3
#: The versions this skebrm reads (version 1 through :func:`_read_first_format`).
READ_VERSIONS = (2, FORMAT_VERSION)
CONFIG_NAME = "refined_reward_model.json"
RM_DIR = "reward_model"
CAL_DIR = "calibrator"
_PARTS = (RM_DIR, CAL_DIR)
_OWN_WEIGHTS = re.compile(rf"^{CAL_DIR}/calibrator-[0-9a-f]{{16}}\.safetensors$")
_REQUIRED = ("penalty", "batch_size", "name", "template", "extraction", "files")
_REQUIRED_SINCE = {3: ("step",)}  # fields a manifest of that version or later must have


# ------------------------------------------------------------------------------- save
def _previous_files(target: Path, overwrite: bool, caller: str) -> set[str]:
    """Files of the bundle already in ``target`` (its manifest's), or refuse the folder."""
    if not target.exists():
        return set()
    if not target.is_dir():
        raise NotADirectoryError(f"{caller}: {str(target)!r} exists and is not a folder.")
    manifest = target / CONFIG_NAME
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            files = doc.get("files")
            return {f for f in files if isinstance(f, str)} if isinstance(files, dict) else set()
    if not overwrite and any(not p.name.startswith(_STAGING) for p in target.iterdir()):
        raise FileExistsError(
            f"{caller}: {str(target)!r} is not empty and holds no saved RefinedRewardModel; "
            "pass an empty or new folder, or overwrite=True to write the bundle into it "
            "(its other files are kept)."
        )
    return set()


def _inside_parts(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) > 1 and parts[0] in _PARTS and not {"", ".", ".."} & set(parts)


def _files_under(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for part in _PARTS
        if (folder / part).is_dir()
        for p in (folder / part).rglob("*")
        if p.is_file() or p.is_symlink()
    }


def save_bundle(bundle, save_directory, *, overwrite: bool = False) -> Path:
    """Write ``bundle`` into ``save_directory`` (see the module docstring)."""
    from skebrm import __version__

    caller = "RefinedRewardModel.save_pretrained"
    target = Path(save_directory)
    previous = {f for f in _previous_files(target, overwrite, caller) if _inside_parts(f)}
    # content-addressed calibrator weights are the bundle's own, even when a save that
    # was killed before writing its manifest left them unnamed
    previous |= {f for f in _files_under(target) if _OWN_WEIGHTS.match(f)}
    with staging_folder(target) as staging:
        bundle.reward_model.save_pretrained(staging / RM_DIR)
        bundle.tokenizer.save_pretrained(staging / RM_DIR)
        # safetensors is save_pretrained's only format in transformers 5 and its default
        # since 4.35; checked here
        if not any((staging / RM_DIR).glob("*.safetensors")):
            raise RuntimeError(
                f"{caller}: the reward model was not saved as safetensors; upgrade transformers."
            )
        bundle.calibrator.save_pretrained(staging / CAL_DIR)
        files = {rel: sha256_file(staging / rel) for rel in staged_files(staging)}
        foreign = sorted(_files_under(target) - previous - set(files))
        if foreign:
            raise FileExistsError(
                f"{caller}: {str(target)!r} holds files that are not the bundle's inside "
                f"its {RM_DIR}/ or {CAL_DIR}/ folder: {foreign[:10]}. They would change what "
                "loads and are never deleted; move them away or save to another folder."
            )
        install_files(staging, target, files)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "skebrm_version": __version__,
            "penalty": bundle.penalty,
            "batch_size": bundle.batch_size,
            "name": bundle.__name__,
            "template": bundle.template,
            "extraction": dict(bundle.extraction_settings),
            "embedding_dim": int(bundle.extractor.n_features_out_),
            "step": bundle.step,
            "debiaser": None if bundle.debiaser is None else bundle.debiaser.to_dict(),
            "step_choice": (None if bundle.step_choice_ is None else bundle.step_choice_.to_dict()),
            "step_choice_penalty": bundle.step_choice_penalty_,
            "files": files,
        }
        write_manifest(target / CONFIG_NAME, config)
    remove_stale(target, previous - set(files))  # the previous bundle's, no longer named
    return target


# ------------------------------------------------------------------------------- load
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_from_buffer(buf, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in ``buf`` (a uint8 array), as views of it."""
    try:
        n = int.from_bytes(bytes(buf[:8]), "little")
        header = json.loads(bytes(buf[8 : 8 + n]))
        base, out = 8 + n, {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _ST_DTYPES[spec["dtype"]]
            start, stop = (int(v) for v in spec["data_offsets"])
            shape = [int(v) for v in spec["shape"]]
            count = math.prod(shape)
            itemsize = torch.empty((), dtype=dtype).element_size()
            if stop - start != count * itemsize or not 0 <= start <= stop <= len(buf) - base:
                raise ValueError(f"tensor {name!r} does not fit the file")
            if count == 0:
                out[name] = torch.empty(shape, dtype=dtype)
            else:
                flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + start)
                out[name] = flat.reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelIntegrityError(
            f"{where}: a weights file is not a safetensors file ({exc})."
        ) from exc
    return out


def _check_folder(folder: Path, files: dict, caller: str) -> None:
    """Every file inside the bundle's parts is in the manifest, and the manifest names
    only files inside them."""
    outside = sorted(rel for rel in files if not _inside_parts(rel))
    if outside:
        raise ModelIntegrityError(
            f"{caller}: the manifest names files outside the bundle: {outside}."
        )
    extra = sorted(_files_under(folder) - set(files))
    if extra:
        raise ModelIntegrityError(
            f"{caller}: {str(folder)!r} holds files that were not saved with the bundle: "
            f"{extra}. Remove them or save the bundle again."
        )


def _load_parts(folder: Path, config: dict, device, caller: str):
    """The RM, its tokenizer and the calibrator, from files read once and verified."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    )
    from transformers.utils import logging as hf_logging

    from skebrm.calibrator import EnergyRewardCalibrator

    dtype = getattr(torch, config["extraction"]["dtype"])
    state: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="skebrm-bundle-") as private:
        private = Path(private)
        for rel, digest in sorted(config["files"].items()):
            data = read_payload(folder / rel, digest, where=caller, hint=" Save the bundle again.")
            if rel.startswith(f"{RM_DIR}/") and rel.endswith(".safetensors"):
                state.update(_safetensors_from_buffer(data, caller))
            else:
                (private / rel).parent.mkdir(parents=True, exist_ok=True)
                (private / rel).write_bytes(data)
        rm_config = AutoConfig.from_pretrained(private / RM_DIR, trust_remote_code=False)
        model_cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(rm_config)]
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = model_cls.from_pretrained(None, config=rm_config, state_dict=state, dtype=dtype)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(private / RM_DIR, trust_remote_code=False)
        calibrator = EnergyRewardCalibrator.from_pretrained(private / CAL_DIR, device=str(device))
    return model.eval(), tokenizer, calibrator


def _read_first_format(path: Path, caller: str) -> dict | None:
    """A config of the first bundle format (``config_sha256`` over ``json.dumps`` with
    sorted keys), checked; None for any other file."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not (
        isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("format_version") == 1
    ):
        return None
    body = {k: v for k, v in doc.items() if k != "config_sha256"}
    try:
        text = json.dumps(body, sort_keys=True, allow_nan=False)
    except ValueError:
        text = None
    if text is None or doc.get("config_sha256") != hashlib.sha256(text.encode()).hexdigest():
        raise ModelIntegrityError(
            f"{caller}: {str(path)!r} was edited after saving (its content does not match "
            "its config_sha256); refusing to load it. Save the bundle again."
        )
    if not isinstance(doc.get("files"), dict):
        raise ModelIntegrityError(f"{caller}: {str(path)!r} has an invalid 'files' table.")
    for rel in doc["files"]:
        check_relative_path(rel, where=caller)
    return doc


def load_bundle(cls, pretrained_directory, *, device="cpu", penalty=None, batch_size=None):
    """Load a bundle written by :func:`save_bundle` (see the module docstring)."""
    from skebrm._bundle_args import _check_batch_size, _check_penalty, _device, _embedding_diff
    from skebrm.extraction.extractor import (
        _legacy_tokenizer_fingerprint,
        remember_weights_fingerprint,
    )

    caller = "RefinedRewardModel.from_pretrained"
    folder = Path(pretrained_directory)
    # the caller's own arguments first: any later error is the files'
    device = _device(device)
    if penalty is not None:
        penalty = _check_penalty(penalty, caller)
    if batch_size is not None:
        batch_size = _check_batch_size(batch_size, caller)
    config = _read_first_format(folder / CONFIG_NAME, caller) or read_manifest(
        folder / CONFIG_NAME,
        format=FORMAT,
        versions=READ_VERSIONS,
        where=caller,
        missing=(
            f"{caller}: {str(folder)!r} is not a saved RefinedRewardModel (no {CONFIG_NAME}); "
            "write one with RefinedRewardModel.save_pretrained."
        ),
        hint=(
            " Pass penalty= or batch_size= to from_pretrained to change those, or save "
            "the bundle again."
        ),
    )
    version = config.get("format_version")
    required = _REQUIRED + tuple(
        k for since, keys in _REQUIRED_SINCE.items() if version >= since for k in keys
    )
    missing = [k for k in required if k not in config]
    if missing:
        raise ModelIntegrityError(
            f"{caller}: {str(folder / CONFIG_NAME)!r} lacks the field(s) {missing}."
        )
    _check_folder(folder, config["files"], caller)
    settings = config["extraction"]
    try:
        debiaser, choice, choice_penalty = _step_fields(config, caller)
        model, tokenizer, calibrator = _load_parts(folder, config, device, caller)
        # the weights are the verified bytes the manifest vouches for: their fingerprint
        # is the recorded one (a loaded model that differs is caught below all the same
        # for every other setting)
        remember_weights_fingerprint(model, settings["weights_sha256"])
        # the penalty check waits until the step choice is restored (it decides which
        # guard's penalty counts)
        defer = DEFER_GUARD_WARNING.set(True)
        try:
            bundle = _build(
                cls,
                (model, tokenizer, calibrator),
                config,
                device=device,
                penalty=penalty,
                batch_size=batch_size,
                debiaser=debiaser,
            )
        finally:
            DEFER_GUARD_WARNING.reset(defer)
    except (ModelIntegrityError, torch.cuda.OutOfMemoryError):
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, OSError) as exc:
        raise ModelIntegrityError(
            f"{caller}: the saved files in {str(folder)!r} do not make a RefinedRewardModel "
            f"({type(exc).__name__}: {exc}); they were not written by save_pretrained or "
            "were edited."
        ) from exc
    saved_tok, loaded_tok = (
        settings.get("tokenizer_sha256"),
        bundle.extraction_settings["tokenizer_sha256"],
    )
    if saved_tok != loaded_tok and saved_tok == _legacy_tokenizer_fingerprint(bundle.tokenizer):
        # saved by skebrm 0.2.0, whose fingerprint included the truncation and padding state
        settings = {**settings, "tokenizer_sha256": loaded_tok}
    diff = _embedding_diff(
        settings, bundle.extraction_settings, "saved", "loaded", recorded_only=False
    )
    if diff:
        raise ModelIntegrityError(
            f"{caller}: the reward model in {str(folder / RM_DIR)!r} is not the one the "
            "bundle was saved with (" + "; ".join(diff) + "); its calibrator does not "
            "apply to it."
        )
    if choice is not None:
        bundle.step_choice_ = choice
        bundle.step_choice_penalty_ = choice_penalty
    warn_if_unguarded(bundle)
    return bundle


def _build(cls, parts, config: dict, *, device, penalty, batch_size, debiaser):
    """The bundle of the loaded ``(model, tokenizer, calibrator)`` and the saved settings
    (``penalty`` and ``batch_size`` override the saved ones when not None)."""
    from skebrm.extraction import HeadAdapter

    settings = config["extraction"]
    return cls(
        *parts,
        max_length=settings["max_length"],
        template=config["template"],
        head=HeadAdapter(settings["head"], pooling=settings["pooling"]),
        long_response=settings["long_response"],
        dtype=settings["dtype"],
        penalty=config["penalty"] if penalty is None else penalty,
        batch_size=config["batch_size"] if batch_size is None else batch_size,
        device=device,
        name=config["name"],
        debiaser=debiaser,
        step=config.get("step", "refined"),
    )


def _step_fields(config: dict, caller: str):
    """The saved debiaser, step choice and its penalty (None for a bundle saved without
    them); ``ModelIntegrityError`` for a choice that did not choose the saved step."""
    from skebrm.debias import LengthDebiaser
    from skebrm.steps import StepChoice

    raw = config.get("debiaser")
    debiaser = None if raw is None else LengthDebiaser.from_dict(raw)
    raw = config.get("step_choice")
    choice = None if raw is None else StepChoice.from_dict(raw)
    penalty = config.get("step_choice_penalty")
    if penalty is not None:
        if (
            not isinstance(penalty, (int, float))
            or isinstance(penalty, bool)
            or not math.isfinite(penalty)
            or penalty < 0
        ):
            raise ValueError(
                f"step_choice_penalty must be a finite float >= 0 or null, got {penalty!r}"
            )
        penalty = float(penalty)
    step = config.get("step", "refined")
    if choice is not None and choice.step != step:
        raise ModelIntegrityError(
            f"{caller}: the step choice chose {choice.step!r}, but the manifest serves step "
            f"{step!r}; the manifest was edited. Save the bundle again."
        )
    return debiaser, choice, penalty

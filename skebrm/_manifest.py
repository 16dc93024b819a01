"""One checksummed-JSON manifest format for everything skebrm saves.

The calibrator, the bundle, the embedding cache and the sample cache each describe what
they wrote in one JSON file of this shape (keys sorted, written atomically)::

    format          what the artefact is, e.g. "skebrm.EnergyRewardCalibrator"
    format_version  the version of that artefact's own layout
    files           {path relative to the manifest's folder: SHA-256 of the file}
    ...             the artefact's own fields
    content_sha256  SHA-256 of the canonical JSON of everything above

The canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"),
allow_nan=False)`` in UTF-8. A payload file is read once (:func:`read_payload`): its
bytes are hashed as they are read and the same bytes are returned to be parsed, so what
is checked is what is used, with no second read that a file swapped in between could
change. The checksums catch edits, truncation and corruption; they are not a signature
against a deliberate forger, who can recompute them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

import numpy as np

from skebrm._io import write_json_atomic
from skebrm.exceptions import ModelIntegrityError

__all__ = [
    "DIGEST_KEY",
    "canonical",
    "check_relative_path",
    "digest",
    "read_manifest",
    "read_payload",
    "seal",
    "write_manifest",
]

DIGEST_KEY = "content_sha256"
MAX_MANIFEST_BYTES = 64 << 20
_BLOCK = 1 << 22


def canonical(obj) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, no spaces, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def digest(doc: dict) -> str:
    """SHA-256 of the canonical JSON of ``doc`` without its own ``content_sha256``."""
    return hashlib.sha256(canonical({k: v for k, v in doc.items() if k != DIGEST_KEY})).hexdigest()


def seal(doc: dict) -> dict:
    """A copy of ``doc`` with its ``content_sha256``."""
    body = {k: v for k, v in doc.items() if k != DIGEST_KEY}
    return {**body, DIGEST_KEY: digest(body)}


def write_manifest(path: str | os.PathLike, doc: dict) -> dict:
    """Seal ``doc`` and write it to ``path`` atomically; returns the sealed document."""
    if not isinstance(doc.get("format"), str) or not isinstance(doc.get("format_version"), int):
        raise ValueError("write_manifest: doc needs a str 'format' and an int 'format_version'.")
    sealed = seal(doc)
    write_json_atomic(path, sealed)
    return sealed


def check_relative_path(rel, *, where: str, error: type[Exception] = ModelIntegrityError) -> str:
    """``rel`` if it names a file inside the manifest's folder (no ``..``, not absolute)."""
    pure = PurePosixPath(rel) if isinstance(rel, str) else None
    if (
        pure is None
        or not rel
        or pure.is_absolute()
        or "\\" in rel
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise error(f"{where}: the manifest names an invalid file path {rel!r}.")
    return rel


def read_payload(
    path: str | os.PathLike,
    expected_sha256: str,
    *,
    where: str,
    error: type[Exception] = ModelIntegrityError,
    hint: str = "",
) -> np.ndarray:
    """The bytes of ``path``, checked against ``expected_sha256`` as they are read.

    The file is read once, in blocks, into one buffer while it is hashed; the buffer that
    is returned (a writable uint8 array: ``bytes(buf)`` for the bytes) is the one that
    was hashed.

    Raises
    ------
    error
        The file is missing, changed size while it was read, or its SHA-256 differs.
    """
    path = Path(path)
    h = hashlib.sha256()
    try:
        fh = open(path, "rb", buffering=0)  # closed by the with block below
    except FileNotFoundError:
        raise error(f"{where}: the file {str(path)!r} is missing.{hint}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        # an uninitialised, writable buffer (a bytearray would be zero-filled first); the
        # tensors of a weights file are views of it
        buf = np.empty(size, dtype=np.uint8)
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = fh.readinto(view[pos : pos + _BLOCK])
            if not n:
                break
            h.update(view[pos : pos + n])
            pos += n
        view.release()
        if pos != size or fh.read(1):
            raise error(f"{where}: the file {str(path)!r} changed while it was read.{hint}")
    if h.hexdigest() != expected_sha256:
        raise error(
            f"{where}: the file {str(path)!r} was modified after saving (its SHA-256 differs "
            f"from the one its manifest records); refusing to load it.{hint}"
        )
    return buf


def read_manifest(
    path: str | os.PathLike,
    *,
    format: str,
    versions: tuple[int, ...],
    where: str,
    missing: str,
    error: type[Exception] = ModelIntegrityError,
    hint: str = "",
) -> dict:
    """Read a manifest and check its format, its version and its ``content_sha256``.

    Parameters
    ----------
    path : path-like
    format : str
        The expected ``format``.
    versions : tuple of int
        The ``format_version`` values this skebrm reads.
    where : str
        The caller, for messages.
    missing : str
        Message of the ``FileNotFoundError`` raised when ``path`` does not exist.
    error : exception type, default=ModelIntegrityError
        Raised for anything else that is wrong.
    hint : str, default=""
        Appended to the message of an edited manifest (how to fix it).

    Returns
    -------
    dict
        The manifest, ``content_sha256`` included.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise error(f"{where}: {str(path)!r} is larger than any manifest skebrm writes.")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{where}: {str(path)!r} is not valid JSON ({exc}).") from exc
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != format:
        raise error(
            f"{where}: {str(path)!r} is not a saved {format.removeprefix('skebrm.')} "
            f"(format {found!r}, expected {format!r})."
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in versions:
        newer = isinstance(version, int) and version > max(versions)
        raise error(
            f"{where}: {str(path)!r} has format_version {version!r} (saved by skebrm "
            f"{doc.get('skebrm_version')!r}); this skebrm reads format_version "
            f"{', '.join(map(str, versions))}. "
            + ("Upgrade skebrm to load it." if newer else "Save it again with this skebrm.")
        )
    try:
        ok = doc.get(DIGEST_KEY) == digest(doc)
    except ValueError:  # a NaN or inf that no writer puts there
        ok = False
    if not ok:
        raise error(
            f"{where}: {str(path)!r} was edited after saving (its content no longer matches "
            f"its {DIGEST_KEY}); refusing to load it.{hint}"
        )
    files = doc.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(v, str) and len(v) == 64 for v in files.values()
    ):
        raise error(f"{where}: {str(path)!r} has an invalid 'files' table.")
    for rel in files:
        check_relative_path(rel, where=where, error=error)
    return doc

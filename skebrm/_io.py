"""Writing files so that nothing on disk is ever half-done, and checksums.

Every writer of the package goes through these helpers: a file is written to a temporary
name in its destination folder, flushed to disk, then renamed over the destination
(``os.replace`` is atomic on POSIX and Windows), so a reader sees the old file or the new
one, never a part. A saved model of several files is written *into* its folder, as
Hugging Face's ``save_pretrained`` does: built in a hidden staging folder inside it
(:func:`staging_folder`), then each file renamed into place (:func:`install_files`), so
the folder's other files are never touched. :func:`staged_directory` instead swaps a
whole folder in, for folders that hold nothing else (a training checkpoint).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "install_files",
    "remove_stale",
    "sha256_bytes",
    "sha256_file",
    "staged_directory",
    "staged_files",
    "staging_folder",
    "tmp_name",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tmp_name(path: str | os.PathLike) -> Path:
    """A hidden temporary name beside ``path``, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int = 1) -> Path:
    """Strict JSON (no NaN), keys sorted, written atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in for ``target`` whole.

    Yields an empty folder beside ``target``. When the block ends without an exception
    the folder replaces ``target`` (an existing ``target`` is moved aside first and
    deleted after the swap, so at every moment ``target`` is either absent, the old
    folder or the new one); on an exception the temporary folder is deleted and
    ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


_STAGING = ".skebrm-staging-"


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A hidden, empty folder inside ``target`` (created if needed), removed afterwards.

    Staging folders left by a killed process are removed first.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob(f"{_STAGING}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target, prefix=_STAGING))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staged_files(folder: str | os.PathLike) -> list[str]:
    """Every file below ``folder``, as sorted POSIX paths relative to it."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def install_files(staging: str | os.PathLike, target: str | os.PathLike, files) -> None:
    """Move each of ``files`` (relative paths) from ``staging`` to the same place in
    ``target``: flushed to disk, then renamed over the old file (atomically)."""
    staging, target = Path(staging), Path(target)
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(staging / rel, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staging / rel, dest)


def remove_stale(target: str | os.PathLike, stale) -> None:
    """Delete the files ``stale`` (relative paths) in ``target``, then the folders they
    leave empty (never ``target`` itself)."""
    target = Path(target).resolve()
    parents = set()
    for rel in stale:
        path = target / rel
        if target not in path.resolve().parents:
            continue  # a name that leads outside target is never deleted
        path.unlink(missing_ok=True)
        parents.update(p for p in path.parents if p != target and target in p.parents)
    for d in sorted(parents, key=lambda p: -len(p.parts)):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()

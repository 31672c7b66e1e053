"""Atomic file writes: write to a temporary name in the destination folder, then ``os.replace``.

A reader (or a resumed run) sees either the previous complete file or the new complete file, never a partial one;
an exception while writing leaves the previous file untouched and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on normal exit it replaces ``path`` atomically.

    The temporary name is hidden (leading dot) and keeps the file's extension (``.nii.gz``, ``.png``), so that
    writers which pick the format from the extension (nibabel, PIL, SimpleITK) write the right format.

    The parent folder is created when missing. On an exception inside the block the temporary file is removed and
    the exception propagates; ``path`` keeps its previous content.

    Example::

        with atomic_path("out/metrics.json") as tmp:
            with open(tmp, "w") as f:
                f.write(text)
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    ext = "".join(Path(name).suffixes[-2:]) if name.lower().endswith(".gz") else Path(name).suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results and checkpoints are meant to be shared
    try:
        yield tmp
        with open(tmp, "rb") as f:  # make the bytes durable before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically (temporary file + ``os.replace``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)

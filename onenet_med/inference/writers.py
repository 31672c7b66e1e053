"""MONAI image writers that never leave a half-written file: write to a hidden temporary name, then rename."""

from __future__ import annotations

import os

from monai.data import ITKWriter, NibabelWriter, PILWriter
from monai.data.image_writer import ImageWriter

from onenet_med.engine.atomic import atomic_path

__all__ = ["AtomicITKWriter", "AtomicNibabelWriter", "AtomicPILWriter", "atomic_writer"]


def atomic_writer(writer_class: type[ImageWriter]) -> type[ImageWriter]:
    """A subclass of ``writer_class`` whose ``write`` goes through :func:`onenet_med.engine.atomic.atomic_path`.

    An interrupted save leaves the previous file (or none) in place, never a truncated one; the temporary name
    keeps the extension so the writer picks the same format.
    """

    class _Atomic(writer_class):  # type: ignore[valid-type, misc]
        def write(self, filename: str | os.PathLike, verbose: bool = False, **kwargs):
            with atomic_path(filename) as tmp:
                return super().write(tmp, verbose=verbose, **kwargs)

    _Atomic.__name__ = _Atomic.__qualname__ = f"Atomic{writer_class.__name__}"
    return _Atomic


AtomicNibabelWriter = atomic_writer(NibabelWriter)
AtomicITKWriter = atomic_writer(ITKWriter)
AtomicPILWriter = atomic_writer(PILWriter)

"""Image writers that never leave a half-written file (write to a hidden temporary name, then rename): MONAI
writers made atomic, and :func:`write_like`, which copies an input file's exact geometry."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from monai.data import ITKWriter, NibabelWriter, PILWriter
from monai.data.image_writer import ImageWriter

from onenet_med.engine.atomic import atomic_path

__all__ = [
    "NIFTI_SUFFIXES",
    "AtomicITKWriter",
    "AtomicNibabelWriter",
    "AtomicPILWriter",
    "atomic_writer",
    "is_nifti",
    "write_like",
]


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


#: NIfTI suffixes (written with nibabel, header copied from the input).
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike) -> bool:
    """True for ``.nii`` / ``.nii.gz`` file names."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def write_like(array: np.ndarray, reference: str | os.PathLike, path: str | os.PathLike) -> str:
    """Write ``array`` to ``path`` with exactly the geometry of the image file ``reference``, atomically.

    NIfTI references: the output header is a copy of the reference's (sform and qform with their codes,
    quaternion, pixdim, units), so both affines are bit-identical, whatever the obliquity; only the data type
    and shape change. Other formats (.nrrd, .mha, ...) are written with SimpleITK using the reference's origin,
    spacing and direction. The output format follows ``path``'s extension.

    Args:
        array: (X, Y, Z) or (X, Y, Z, C) in the reference's voxel order (C: channels, e.g. probabilities).
        reference: the input image file whose geometry the output takes.
        path: output file.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: the array's spatial shape differs from the reference's.
    """
    path, reference = os.fspath(path), os.fspath(reference)
    array = np.asarray(array)
    if is_nifti(reference) and is_nifti(path):
        ref = nib.load(reference)
        if tuple(array.shape[:3]) != tuple(ref.shape[:3]):
            raise ValueError(f"array shape {array.shape[:3]} != shape {ref.shape[:3]} of {reference}")
        header = ref.header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(None, None)
        image = nib.Nifti1Image(array, None, header=header)
        with atomic_path(path) as tmp:
            nib.save(image, tmp)
        return path
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(reference)
    info.ReadImageInformation()
    size = tuple(info.GetSize())
    if tuple(array.shape[: len(size)]) != size:
        raise ValueError(f"array shape {array.shape[: len(size)]} != shape {size} of {reference}")
    dim = len(size)
    order = (*range(dim - 1, -1, -1), *range(dim, array.ndim))
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(order)), isVector=array.ndim > dim)
    image.SetOrigin(info.GetOrigin())
    image.SetSpacing(info.GetSpacing())
    image.SetDirection(info.GetDirection())
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, tmp, True)
    return path

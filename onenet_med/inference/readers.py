"""A MONAI image reader backed by SimpleITK, for the formats nibabel does not read (.nrrd, .mha, .mhd, ...).

MONAI's own ``ITKReader`` needs the ``itk`` package (hundreds of MB); SimpleITK is already a dependency of the
package. :class:`SimpleITKReader` follows ``ITKReader``'s conventions exactly (array indexed (x, y, z[, c]),
affine converted from ITK's LPS world to RAS, ``original_channel_dim`` -1 for vector images), so the same
transform chain (``Orientationd("RAS")`` ...) and its inverse behave the same whatever the input format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import is_supported_format, orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["SIMPLEITK_SUFFIXES", "SimpleITKReader", "sitk_affine"]

#: Suffixes read by :class:`SimpleITKReader` (NIfTI stays with MONAI's ``NibabelReader``).
SIMPLEITK_SUFFIXES = ("nrrd", "nhdr", "mha", "mhd", "nia", "hdr", "vtk", "gipl", "gipl.gz", "mnc", "tif", "tiff")


def sitk_affine(image, lps_to_ras: bool = True) -> np.ndarray:
    """The (d+1, d+1) voxel-to-world affine of a SimpleITK image (or image file reader after
    ``ReadImageInformation``): ``direction @ diag(spacing)`` and ``origin``; RAS world when ``lps_to_ras``."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    affine = np.eye(dim + 1)
    affine[:dim, :dim] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:dim, dim] = image.GetOrigin()
    return orientation_ras_lps(affine) if lps_to_ras else affine


class SimpleITKReader(ImageReader):
    """Load images with SimpleITK; register it on ``LoadImage(d)`` with ``.register(SimpleITKReader())``.

    Args:
        channel_dim: the channel axis of the returned array; ``None``: -1 for vector (multi-component) images,
            "no channel" otherwise.
        affine_lps_to_ras: return the affine in RAS world coordinates (MONAI's and nibabel's convention).
        suffixes: file suffixes this reader accepts.
    """

    def __init__(
        self,
        channel_dim: int | None = None,
        affine_lps_to_ras: bool = True,
        suffixes: Sequence[str] = SIMPLEITK_SUFFIXES,
    ):
        super().__init__()
        self.channel_dim = channel_dim
        self.affine_lps_to_ras = affine_lps_to_ras
        self.suffixes = tuple(suffixes)

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        return is_supported_format(filename, self.suffixes)

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs):
        import SimpleITK as sitk

        images = [sitk.ReadImage(os.fspath(name), **kwargs) for name in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Array indexed (x, y, z[, c]) and its meta dict (affine, original_affine, spatial_shape, spacing, space,
        original_channel_dim); several images are stacked as channels."""
        import SimpleITK as sitk

        arrays: list[np.ndarray] = []
        meta: dict = {}
        for image in img if isinstance(img, (list, tuple)) else [img]:  # a sitk.Image iterates over its pixels
            dim = image.GetDimension()
            array = sitk.GetArrayViewFromImage(image)  # (z, y, x[, c]) view into the image buffer
            order = (*range(dim - 1, -1, -1), *range(dim, array.ndim))
            arrays.append(np.array(array.transpose(order), copy=True))
            header: dict = {
                name: image.GetMetaData(name) for name in image.GetMetaDataKeys() if not name.startswith("ITK_")
            }
            header["spacing"] = np.asarray(image.GetSpacing())
            header[MetaKeys.ORIGINAL_AFFINE] = sitk_affine(image, self.affine_lps_to_ras)
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
            header[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize())
            if self.channel_dim is None:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = (
                    -1 if image.GetNumberOfComponentsPerPixel() > 1 else float("nan")
                )
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta

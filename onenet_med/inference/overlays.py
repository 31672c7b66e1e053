"""PNG overlays of a prediction: slices of the image in grey with the label map in colour on top."""

from __future__ import annotations

import os

import numpy as np

from onenet_med.engine.atomic import atomic_path

__all__ = ["PALETTE", "choose_slices", "overlay_slice", "save_overlays"]

#: RGB colours of classes 1, 2, ... (background stays uncoloured); cycles for more classes.
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)],
    dtype=np.float32,
)


def choose_slices(labels: np.ndarray, n: int, axis: int = -1) -> list[int]:
    """``n`` slice indices along ``axis``, evenly spread over the slices holding foreground (all slices when the
    prediction is empty), in increasing order and without repeats.

    Args:
        labels: label map (X, Y, Z) (any integer dtype).
        n: number of slices wanted (fewer when the volume has fewer candidate slices).
        axis: slicing axis.
    """
    if n <= 0:
        return []
    axis = axis % labels.ndim
    other = tuple(a for a in range(labels.ndim) if a != axis)
    candidates = np.flatnonzero(labels.any(axis=other)) if labels.any() else np.arange(labels.shape[axis])
    if len(candidates) <= n:
        return [int(i) for i in candidates]
    picks = np.linspace(0, len(candidates) - 1, n + 2)[1:-1].round().astype(int)
    return sorted({int(candidates[i]) for i in picks})


def overlay_slice(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture (H, W, 3) of one 2D slice: the image windowed to its 1st-99th percentile in grey,
    each foreground class blended with its :data:`PALETTE` colour.

    Args:
        image: (H, W) float slice.
        labels: (H, W) integer slice.
        alpha: opacity of the label colours.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    fg = labels > 0
    if fg.any():
        colours = PALETTE[(labels[fg].astype(np.int64) - 1) % len(PALETTE)]
        rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours
    return rgb.round().astype(np.uint8)


def _display(plane: np.ndarray) -> np.ndarray:
    """(i, j) array plane of an RAS-ordered volume -> picture rows/columns: j upwards, i to the right."""
    return np.flipud(plane.T)


def save_overlays(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    out_prefix: str | os.PathLike,
    n: int,
    axis: int = 2,
    scale: int | None = None,
) -> list[str]:
    """Write ``n`` overlay PNGs ``<out_prefix>_<axis name><index>.png``, atomically.

    The volume is first brought to RAS voxel order with the affine (flips / axis swaps only, no resampling), so
    pictures look the same whatever the file's orientation: axial slices with anterior up and the patient's
    right on the right of the picture (neurological convention).

    Args:
        image: (X, Y, Z) image (one channel) in the file's voxel order.
        labels: (X, Y, Z) label map in the same order.
        affine: (4, 4) voxel-to-world (RAS) affine of both.
        out_prefix: path prefix of the PNGs.
        n: number of slices.
        axis: RAS axis to slice along (0 sagittal, 1 coronal, 2 axial).
        scale: integer upscaling of the pictures (default: small slices are enlarged to about 256 pixels).

    Returns:
        the written paths; slice indices in the names are in RAS voxel order.
    """
    import nibabel as nib
    from PIL import Image

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    image = nib.orientations.apply_orientation(np.asarray(image), ornt)
    labels = nib.orientations.apply_orientation(np.asarray(labels), ornt)
    names = ("sagittal", "coronal", "axial")
    paths = []
    for index in choose_slices(labels, n, axis):
        picture = overlay_slice(_display(np.take(image, index, axis=axis)), _display(np.take(labels, index, axis=axis)))
        factor = scale or max(1, 256 // max(picture.shape[:2]))
        pil = Image.fromarray(picture)
        if factor > 1:
            pil = pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)
        path = f"{os.fspath(out_prefix)}_{names[axis]}{index:03d}.png"
        with atomic_path(path) as tmp:
            pil.save(tmp, format="PNG")
        paths.append(path)
    return paths

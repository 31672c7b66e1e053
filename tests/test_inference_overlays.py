"""Overlays: slice choice, colour blending, and pictures independent of the file's orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from onenet_med.inference.overlays import PALETTE, choose_slices, overlay_slice, save_overlays
from tests.inference_helpers import OBLIQUE_LPS, PERMUTED, RAS


@pytest.mark.parametrize(
    "fg,n,expected",
    [
        ([3, 4, 5, 6, 7], 2, [4, 6]),  # evenly inside the foreground range, ends excluded
        ([3, 4], 5, [3, 4]),  # fewer candidates than asked
        ([], 3, [2, 4, 7]),  # empty prediction: spread over all 10 slices (positions 2.25, 4.5, 6.75)
        ([1, 8], 0, []),
    ],
)
def test_choose_slices(fg, n, expected):
    labels = np.zeros((4, 4, 10), np.uint8)
    labels[1, 1, fg] = 1
    assert choose_slices(labels, n) == expected


def test_overlay_slice_colours():
    image = np.tile(np.linspace(0, 100, 10, dtype=np.float32), (6, 1))
    labels = np.zeros((6, 10), np.uint8)
    labels[2, 3], labels[4, 8] = 1, 2
    rgb = overlay_slice(image, labels, alpha=0.5)
    assert rgb.shape == (6, 10, 3) and rgb.dtype == np.uint8
    grey = overlay_slice(image, np.zeros_like(labels))
    assert (grey[..., 0] == grey[..., 1]).all() and grey[0, 0, 0] == 0 and grey[0, -1, 0] == 255
    np.testing.assert_allclose(rgb[2, 3], np.round(0.5 * grey[2, 3] + 0.5 * PALETTE[0]), atol=1)
    np.testing.assert_allclose(rgb[4, 8], np.round(0.5 * grey[4, 8] + 0.5 * PALETTE[1]), atol=1)
    np.testing.assert_array_equal(rgb[0], grey[0])


@pytest.mark.parametrize("affine", [OBLIQUE_LPS, PERMUTED], ids=["oblique_lps", "permuted"])
def test_pictures_do_not_depend_on_file_orientation(tmp_path, affine):
    rng = np.random.default_rng(0)
    image = rng.random((7, 6, 5)).astype(np.float32)
    labels = (rng.random((7, 6, 5)) > 0.7).astype(np.uint8)
    ras = save_overlays(image, labels, RAS, tmp_path / "ras", 2)
    # the same voxels stored in another orientation: inverse of the RAS reorientation
    ornt = nib.orientations.io_orientation(affine)
    inv = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    other = save_overlays(
        nib.orientations.apply_orientation(image, inv), nib.orientations.apply_orientation(labels, inv),
        affine, tmp_path / "other", 2,
    )  # fmt: skip
    assert len(ras) == len(other) == 2
    for a, b in zip(ras, other):
        assert a.split("_")[-1] == b.split("_")[-1]
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    # anterior up: the last row of a RAS axial slice (largest y) is the top row of the picture
    index = int(ras[0].split("axial")[-1][:3])
    picture = np.asarray(Image.open(ras[0]))
    factor = picture.shape[0] // 6
    expected = overlay_slice(np.flipud(image[:, :, index].T), np.flipud(labels[:, :, index].T))
    np.testing.assert_array_equal(picture[::factor, ::factor], expected)

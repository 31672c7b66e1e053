"""SimpleITKReader: the same arrays, affines and channel layout as MONAI's NibabelReader for the same image."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from monai.data import NibabelReader
from monai.transforms import EnsureChannelFirstd, LoadImaged

from onenet_med.inference.readers import SimpleITKReader, sitk_affine
from tests.inference_helpers import OBLIQUE_LPS, PERMUTED, make_volume, save_nifti


@pytest.mark.parametrize("affine", [OBLIQUE_LPS, PERMUTED], ids=["oblique_lps", "permuted"])
@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
@pytest.mark.parametrize("channels", [1, 3])
def test_matches_nibabel_reader(tmp_path, affine, ext, channels):
    src = save_nifti(tmp_path / "in.nii.gz", make_volume((9, 8, 5), channels), affine)
    image = sitk.ReadImage(src)
    if channels > 1:  # NIfTI 4D -> a vector image, as scanners' multi-component files are
        image = sitk.Compose([image[:, :, :, c] for c in range(channels)])
    other = str(tmp_path / f"in{ext}")
    sitk.WriteImage(image, other)
    nib_reader = NibabelReader()
    ref_data, ref_meta = nib_reader.get_data(nib_reader.read(src))
    reader = SimpleITKReader()
    assert reader.verify_suffix(other) and not reader.verify_suffix(src)
    data, meta = reader.get_data(reader.read(other))
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_allclose(meta["affine"], ref_meta["affine"], atol=1e-5)
    np.testing.assert_array_equal(meta["spatial_shape"], (9, 8, 5))
    assert meta["space"] == "RAS"
    # through MONAI's LoadImaged with the reader registered: channel first like NIfTI
    load = LoadImaged("image", image_only=True)
    load.register(SimpleITKReader())
    item = EnsureChannelFirstd("image")(load({"image": other}))
    assert tuple(item["image"].shape) == (channels, 9, 8, 5)


def test_stacks_several_files_as_channels(tmp_path):
    paths = []
    for c in range(2):
        img = sitk.GetImageFromArray(np.full((5, 4, 3), c, np.float32))
        paths.append(str(tmp_path / f"c{c}.mha"))
        sitk.WriteImage(img, paths[-1])
    reader = SimpleITKReader()
    data, meta = reader.get_data(reader.read(paths))
    assert data.shape == (2, 3, 4, 5) and meta["original_channel_dim"] == 0
    np.testing.assert_array_equal(data[1], 1.0)


def test_lps_to_ras_affine():
    img = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    img.SetSpacing((0.5, 2.0, 3.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    expected = np.diag([-0.5, -2.0, 3.0, 1.0])
    expected[:3, 3] = (-10.0, -20.0, 30.0)
    np.testing.assert_array_equal(sitk_affine(img), expected)
    np.testing.assert_array_equal(sitk_affine(img, lps_to_ras=False)[:3, 3], (10.0, 20.0, 30.0))

"""write_like: the input's exact geometry (NIfTI header bit for bit, SimpleITK origin/spacing/direction), atomically."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from onenet_med.inference.writers import is_nifti, write_like
from tests.inference_helpers import OBLIQUE_LPS, PERMUTED, make_volume, save_nifti

GEOMETRY_FIELDS = ["sform_code", "qform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                   "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units"]  # fmt: skip


@pytest.mark.parametrize("affine", [OBLIQUE_LPS, PERMUTED], ids=["oblique_lps", "permuted"])
@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_header_copied_bit_for_bit(tmp_path, affine, ext):
    src = save_nifti(tmp_path / f"in{ext}", make_volume((9, 8, 5)), affine)
    labels = (np.arange(9 * 8 * 5).reshape(9, 8, 5) % 3).astype(np.uint8)
    out = write_like(labels, src, tmp_path / f"out{ext}")
    a, b = nib.load(src), nib.load(out)
    for name in GEOMETRY_FIELDS:
        np.testing.assert_array_equal(
            b.header[name][:4] if name == "pixdim" else b.header[name],
            a.header[name][:4] if name == "pixdim" else a.header[name],
            err_msg=name,
        )
    assert b.get_data_dtype() == np.uint8 and b.shape == (9, 8, 5)
    np.testing.assert_array_equal(np.asarray(b.dataobj), labels)
    # probabilities: 4D, channels last, same spatial header
    probs = np.random.default_rng(0).random((9, 8, 5, 3)).astype(np.float32)
    p = nib.load(write_like(probs, src, tmp_path / f"prob{ext}"))
    assert p.shape == (9, 8, 5, 3) and p.get_data_dtype() == np.float32
    np.testing.assert_array_equal(p.get_sform(), a.get_sform())
    np.testing.assert_array_equal(p.get_qform(), a.get_qform())
    np.testing.assert_array_equal(np.asarray(p.dataobj), probs)


def test_scaled_input_does_not_scale_labels(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 5, 3), np.int16), OBLIQUE_LPS)
    img.header.set_slope_inter(2.5, 10.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    labels = np.full((4, 5, 3), 3, np.uint8)
    out = nib.load(write_like(labels, tmp_path / "scaled.nii.gz", tmp_path / "seg.nii.gz"))
    np.testing.assert_array_equal(out.get_fdata(), 3.0)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_simpleitk_geometry(tmp_path, ext):
    src = save_nifti(tmp_path / "in.nii.gz", make_volume((9, 8, 5)), OBLIQUE_LPS)
    other = str(tmp_path / f"in{ext}")
    sitk.WriteImage(sitk.ReadImage(src), other)
    labels = (np.arange(9 * 8 * 5).reshape(9, 8, 5) % 2).astype(np.uint8)
    out = sitk.ReadImage(write_like(labels, other, tmp_path / f"out{ext}"))
    ref = sitk.ReadImage(other)
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(out, get)(), getattr(ref, get)(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out).transpose(2, 1, 0), labels)
    vec = sitk.ReadImage(write_like(np.zeros((9, 8, 5, 2), np.float32), other, tmp_path / f"prob{ext}"))
    assert vec.GetNumberOfComponentsPerPixel() == 2 and vec.GetSize() == (9, 8, 5)


def test_shape_mismatch_is_refused(tmp_path):
    src = save_nifti(tmp_path / "in.nii.gz", make_volume((9, 8, 5)))
    with pytest.raises(ValueError, match=r"array shape \(8, 9, 5\) != shape \(9, 8, 5\) of .*in\.nii\.gz"):
        write_like(np.zeros((8, 9, 5), np.uint8), src, tmp_path / "out.nii.gz")


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    src = save_nifti(tmp_path / "in.nii.gz", make_volume((9, 8, 5)))
    target = tmp_path / "out" / "seg.nii.gz"

    def crash(image, filename):  # half a file, then the process "dies"
        with open(filename, "wb") as f:
            f.write(b"\x1f\x8b partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        write_like(np.zeros((9, 8, 5), np.uint8), src, target)
    assert os.listdir(target.parent) == []


def test_is_nifti():
    assert is_nifti("a.nii") and is_nifti("A.NII.GZ") and not is_nifti("a.nrrd") and not is_nifti("nii.mha")

"""``onenet-med predict``: outputs per case, summary, robustness (corrupt files, no overwrite, atomic writes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from onenet_med.cli import main
from onenet_med.inference.cli import parse_overrides
from tests.data_trees import make_msd_task
from tests.inference_helpers import BUNDLES, OBLIQUE_LPS, make_volume, save_checkpoint, save_nifti

HEART = str(BUNDLES / "onenet_heart")


@pytest.fixture
def cases(tmp_path):
    """A folder with two good NIfTI volumes (oblique, LPS-like) and a corrupt one, and a tiny heart checkpoint."""
    folder = tmp_path / "scans"
    good = [
        save_nifti(folder / "a.nii.gz", make_volume((21, 19, 7), seed=0), OBLIQUE_LPS),
        save_nifti(folder / "c.nii.gz", make_volume((17, 23, 5), seed=1), OBLIQUE_LPS),
    ]
    (folder / "b.nii.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    ckpt, _ = save_checkpoint(tmp_path / "model.pt", "heart", spread_on=good[0])
    return folder, good, ckpt


def _predict(ckpt, *args) -> int:
    return main(
        ["predict", "--bundle", HEART, "--checkpoint", ckpt, "--override", "network_def#features=4", "--no-progress"]
        + [str(a) for a in args]
    )


def test_folder_with_corrupt_file(tmp_path, cases, capsys):
    folder, good, ckpt = cases
    out = tmp_path / "out"
    assert _predict(ckpt, folder, "--output", out) == 1  # non-zero: one input failed
    captured = capsys.readouterr()
    assert "b.nii.gz" in captured.err and "unreadable or corrupt" in captured.err
    assert "FAILED" in captured.out and "2/3 predicted" in captured.out
    for src in good:
        stem = os.path.basename(src)[: -len(".nii.gz")]
        seg = nib.load(out / f"{stem}_seg.nii.gz")
        ref = nib.load(src)
        assert seg.shape == ref.shape and seg.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(seg.get_sform(), ref.get_sform())
        np.testing.assert_array_equal(seg.get_qform(), ref.get_qform())
        record = json.loads((out / f"{stem}_seg.json").read_text())
        labels = np.asarray(seg.dataobj)
        voxel_ml = abs(np.linalg.det(ref.affine[:3, :3])) / 1000
        assert record["volume_ml"]["left atrium"] == pytest.approx((labels == 1).sum() * voxel_ml)
        assert record["slices"] == nib.as_closest_canonical(ref).shape[2] and record["seconds"]["total"] > 0
        assert record["outputs"]["labels"] == str(out / f"{stem}_seg.nii.gz") and record["device"] == "cpu"
    assert not (out / "b_seg.nii.gz").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 3 and summary["succeeded"] == 2
    assert [f["input"] for f in summary["failed"]] == [str(folder / "b.nii.gz")]
    assert summary["volumes_per_minute"] > 0 and len(summary["cases"]) == 2
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary file left behind


def test_existing_outputs_need_overwrite(tmp_path, cases, capsys):
    folder, good, ckpt = cases
    out = tmp_path / "out"
    assert _predict(ckpt, good[0], "--output", out) == 0
    seg = out / "a_seg.nii.gz"
    seg.write_bytes(b"previous result")
    assert _predict(ckpt, good[0], "--output", out) == 1
    assert "output exists" in capsys.readouterr().err and "--overwrite" in (out / "summary.json").read_text()
    assert seg.read_bytes() == b"previous result"
    assert _predict(ckpt, good[0], "--output", out, "--overwrite") == 0
    assert nib.load(seg).shape == (21, 19, 7)


def test_dataset_json_probabilities_and_overlays(tmp_path, capsys):
    task = make_msd_task(tmp_path / "msd", "heart", n_train=1, n_test=2, shape=(20, 24, 6))
    ckpt, _ = save_checkpoint(tmp_path / "model.pt", "heart", spread_on=task / "imagesTs" / "case_001.nii.gz")
    out = tmp_path / "out"
    code = _predict(
        ckpt, task / "dataset.json", "--output", out, "--save-probabilities", "--overlays", "2", "--batch-slices", "4"
    )
    assert code == 0, capsys.readouterr()
    for i in (1, 2):
        prob = nib.load(out / f"case_{i:03d}_prob.nii.gz")
        seg = np.asarray(nib.load(out / f"case_{i:03d}_seg.nii.gz").dataobj)
        p = np.asarray(prob.dataobj)
        assert p.shape == (20, 24, 6, 2) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(p.argmax(-1), seg)
        pngs = sorted(out.glob(f"case_{i:03d}_overlay_axial*.png"))
        assert len(pngs) == 2
        record = json.loads((out / f"case_{i:03d}_seg.json").read_text())
        assert sorted(record["outputs"]["overlays"]) == [str(p) for p in pngs]
        with Image.open(pngs[0]) as im:
            assert im.mode == "RGB" and im.size[0] >= 20
    assert "case_001.nii.gz" in capsys.readouterr().out


def test_mha_in_mha_out_and_axis(tmp_path, cases):
    _, good, ckpt = cases
    mha = str(tmp_path / "scan.mha")
    sitk.WriteImage(sitk.ReadImage(good[0]), mha)
    out = tmp_path / "out"
    assert _predict(ckpt, mha, good[0], "--output", out, "--axis", "coronal") == 0
    written = sitk.ReadImage(str(out / "scan_seg.mha"))
    src = sitk.ReadImage(mha)
    assert written.GetSize() == src.GetSize() and written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(written.GetDirection(), src.GetDirection())
    np.testing.assert_array_equal(written.GetOrigin(), src.GetOrigin())
    a = sitk.GetArrayFromImage(written).transpose(2, 1, 0)
    b = np.asarray(nib.load(out / "a_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(a, b)  # same voxels and geometry in two formats: same prediction
    record = json.loads((out / "scan_seg.json").read_text())
    assert record["axis"] == 1 and record["slices"] == 32  # coronal slices of the 32-padded RAS volume


def test_usage_errors(tmp_path, cases, capsys):
    folder, good, ckpt = cases
    other = tmp_path / "other"
    save_nifti(other / "a.nii.gz", make_volume((9, 9, 3)), OBLIQUE_LPS)
    assert _predict(ckpt, good[0], other / "a.nii.gz", "--output", tmp_path / "o") == 2
    assert "would both write" in capsys.readouterr().err
    assert _predict(ckpt, tmp_path / "empty_dir_missing", "--output", tmp_path / "o") == 1  # reported per case
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _predict(ckpt, tmp_path / "empty", "--output", tmp_path / "o") == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", "--bundle", str(tmp_path), str(good[0]), "--output", str(tmp_path / "o")]) == 2
    assert "not a bundle folder" in capsys.readouterr().err
    assert _predict(ckpt, good[0], "--output", tmp_path / "o", "--overlays", "-1") == 2


@pytest.mark.parametrize(
    "flags,expected",
    [
        ([], {"batch_slices": 1, "optimize": True, "amp": False, "channels_last": False, "compile": False}),
        (
            ["--no-optimize", "--channels-last", "--amp", "false", "--batch-slices", "3"],
            {"batch_slices": 3, "optimize": False, "amp": False, "channels_last": True, "compile": False},
        ),
        (["--amp", "--override", "optimize=false"], {"optimize": False, "amp": True}),
    ],
    ids=["defaults", "switches", "bundle_key"],
)
def test_speed_switches(tmp_path, cases, flags, expected):
    _, good, ckpt = cases
    out = tmp_path / "out"
    assert _predict(ckpt, good[0], "--output", out, "--device", "cpu", *flags) == 0
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert {k: settings[k] for k in expected} == expected


def test_parse_overrides():
    assert parse_overrides(["network_def#features=8", "device=cpu", "spatial_size=[64, 64]", "x=null"]) == {
        "network_def#features": 8,
        "device": "cpu",
        "spatial_size": [64, 64],
        "x": None,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["features"])


@pytest.mark.slow  # a second interpreter importing MONAI: ~10 s on the shared 2-core machine
def test_entry_point_exit_code(tmp_path, cases, subprocess_env):
    folder, _, ckpt = cases
    cmd = [sys.executable, "-m", "onenet_med", "predict", "--bundle", HEART, "--checkpoint", ckpt]
    cmd += ["--override", "network_def#features=4", str(folder), "--output", str(tmp_path / "out")]
    run = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert "b.nii.gz" in run.stderr and (tmp_path / "out" / "a_seg.nii.gz").exists()
    assert "cases" in run.stderr  # progress bar over cases

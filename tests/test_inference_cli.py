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
    assert _predict(ckpt, good[0], "--out", out, "--overwrite") == 0  # --out as for export
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


def _read_csv(path) -> list[dict[str, str]]:
    """volumes.csv as pandas reads it when installed (strings, empty cells as ""), else with the csv module."""
    try:
        import pandas as pd
    except ImportError:
        import csv

        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.to_dict("records")


def test_volumes_csv_one_row_per_case_with_failures(tmp_path, cases):
    from onenet_med.report.cohort import flag_cases, volume_table_columns

    folder, good, ckpt = cases
    out = tmp_path / "out"
    assert _predict(ckpt, folder, "--output", out) == 1
    rows = _read_csv(out / "volumes.csv")
    with open(out / "volumes.csv") as f:
        assert f.readline().rstrip("\n").split(",") == volume_table_columns(["background", "left atrium"], False)
    assert [r["case"] for r in rows] == ["a", "b", "c"]  # input order, one row per case
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "b.nii.gz" in rows[1]["error"] and "unreadable or corrupt" in rows[1]["error"]
    assert rows[1]["flag"] == "failed" and rows[1]["volume_ml_left atrium"] == ""
    for row, src in zip((rows[0], rows[2]), good):
        record = json.loads((out / f"{row['case']}_seg.json").read_text())
        assert row["input"] == src and int(row["slices"]) == record["slices"] and row["error"] == ""
        assert float(row["volume_ml_left atrium"]) == pytest.approx(record["volume_ml"]["left atrium"], rel=1e-5)
        assert float(row["uncertainty"]) == pytest.approx(record["uncertainty"], abs=1e-6)
        assert 0 < float(row["uncertainty"]) < 1 and row["augmentations"] == "1" and row["disagreement"] == ""
        assert len(record["slice_uncertainty"]) == nib.load(src).shape[record["slice_axis"]]
    flags, z = flag_cases([float(rows[0]["uncertainty"]), float(rows[2]["uncertainty"])])
    assert [rows[0]["flag"], rows[2]["flag"]] == flags
    np.testing.assert_allclose([float(rows[0]["robust_z"]), float(rows[2]["robust_z"])], z, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["volumes_csv"] == str(out / "volumes.csv") and summary["flagged"] == []
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary file left behind


def test_tta_uncertainty_map_and_labels_agreement(tmp_path, cases):
    folder, good, ckpt = cases
    first = tmp_path / "first"
    assert _predict(ckpt, *good, "--output", first, "--tta") == 0
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.nii.gz").write_bytes((first / "a_seg.nii.gz").read_bytes())  # reference = the prediction: Dice 1
    ref_c = nib.load(good[1])
    nib.save(nib.Nifti1Image(np.zeros(ref_c.shape, np.uint8), ref_c.affine), labels / "c.nii.gz")  # empty reference
    out = tmp_path / "out"
    assert _predict(ckpt, *good, "--output", out, "--tta", "--save-uncertainty", "--labels", labels) == 0
    rows = {r["case"]: r for r in _read_csv(out / "volumes.csv")}
    a, c = rows["a"], rows["c"]
    assert a["augmentations"] == c["augmentations"] == "4" and float(a["disagreement"]) >= 0
    assert a["reference"] == str(labels / "a.nii.gz") and float(a["dice_left atrium"]) == 1.0
    assert float(a["difference_ml_left atrium"]) == 0.0
    assert float(a["reference_ml_left atrium"]) == pytest.approx(float(a["volume_ml_left atrium"]), rel=1e-5)
    assert float(c["dice_left atrium"]) == 0.0 and float(c["reference_ml_left atrium"]) == 0.0
    assert float(c["difference_ml_left atrium"]) == pytest.approx(float(c["volume_ml_left atrium"]), rel=1e-5)
    for src in good:
        stem = os.path.basename(src)[: -len(".nii.gz")]
        unc = nib.load(out / f"{stem}_uncertainty.nii.gz")
        assert unc.shape == nib.load(src).shape and unc.get_data_dtype() == np.float32
        np.testing.assert_array_equal(unc.get_sform(), nib.load(src).get_sform())
        values = np.asarray(unc.dataobj)
        assert values.min() >= 0 and values.max() <= 1
        seg = np.asarray(nib.load(out / f"{stem}_seg.nii.gz").dataobj)
        assert float(rows[stem]["uncertainty"]) == pytest.approx(float(values[seg > 0].mean()), abs=1e-5)
    text = (out / "agreement.md").read_text()
    assert "| left atrium | 2 |" in text and "(agreement_left_atrium.png)" in text
    assert (out / "agreement_left_atrium.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["agreement"]["statistics"]["left atrium"]
    differences = [float(r["difference_ml_left atrium"]) for r in (a, c)]
    assert stats["n"] == 2 and stats["bias"] == pytest.approx(np.mean(differences), rel=1e-5)
    assert stats["sd"] == pytest.approx(np.std(differences, ddof=1), rel=1e-5)


def test_labels_from_a_dataset_json_and_missing_labels(tmp_path, capsys):
    from onenet_med.report.cohort import case_agreement

    task = make_msd_task(tmp_path / "msd", "heart", n_train=2, n_test=1, shape=(20, 24, 6))
    ckpt, _ = save_checkpoint(tmp_path / "model.pt", "heart", spread_on=task / "imagesTr" / "case_000.nii.gz")
    out = tmp_path / "out"
    inputs = [task / "imagesTr", task / "imagesTs"]
    assert _predict(ckpt, *inputs, "--output", out, "--labels", task / "dataset.json") == 0
    rows = {r["case"]: r for r in _read_csv(out / "volumes.csv")}
    for case in ("case_000", "case_001"):
        label = task / "labelsTr" / f"{case}.nii.gz"
        assert rows[case]["reference"] == str(label) and rows[case]["agreement_error"] == ""
        seg = np.asarray(nib.load(out / f"{case}_seg.nii.gz").dataobj)
        ref = nib.load(label)
        expected = case_agreement(
            seg,
            np.asarray(ref.dataobj).astype(np.int64),
            abs(np.linalg.det(ref.affine[:3, :3])) / 1000,
            ["background", "left atrium"],
        )
        assert float(rows[case]["dice_left atrium"]) == pytest.approx(expected["left atrium"]["dice"], abs=1e-6)
    test_case = next(name for name in rows if name not in ("case_000", "case_001"))
    assert rows[test_case]["reference"] == "" and "no reference label" in rows[test_case]["agreement_error"]
    assert "| left atrium | 2 |" in (out / "agreement.md").read_text()
    assert _predict(ckpt, *inputs, "--output", out, "--labels", tmp_path / "nothere") == 2
    assert "nothere" in capsys.readouterr().err
    assert _predict(ckpt, *inputs, "--output", out, "--outlier-z", "0") == 2

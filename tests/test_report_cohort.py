"""Cohort statistics (hand-computed), volumes.csv, reference labels and the agreement report."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from parameterized import parameterized

from onenet_med.report.cohort import (
    agreement_statistics,
    bland_altman,
    case_agreement,
    flag_cases,
    json_safe,
    label_for,
    pearson,
    read_label_map,
    reference_labels,
    robust_z_scores,
    spearman,
    volume_table_columns,
    write_agreement_report,
    write_volume_table,
)
from tests.inference_helpers import RAS, save_nifti

NAMES = ["background", "CSF/other brain", "grey matter"]

BLAND_ALTMAN_CASES = [
    # d = [1, 0, -1, 3]: bias 0.75, SD sqrt(8.75 / 3) = 1.707825, LoA 0.75 -+ 3.347337
    ("four", [10, 12, 14, 20], [9, 12, 15, 17], 4, 0.75, 1.7078251, -2.5973372, 4.0973372),
    # a NaN pair is left out: d = [2, 4]: bias 3, SD sqrt(2) = 1.414214
    ("nan_left_out", [5, 7, float("nan")], [3, 3, 1], 2, 3.0, 1.4142136, 3 - 1.96 * 1.4142136, 3 + 1.96 * 1.4142136),
    ("one_pair", [5.0], [4.0], 1, 1.0, math.nan, math.nan, math.nan),
]


@parameterized.expand(BLAND_ALTMAN_CASES)
def test_bland_altman(_, predicted, reference, n, bias, sd, low, high):
    got = bland_altman(predicted, reference)
    assert got["n"] == n
    for key, value in (("bias", bias), ("sd", sd), ("loa_low", low), ("loa_high", high)):
        assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


CORRELATION_CASES = [
    # dx = -1.5 -.5 .5 1.5, dy = -3 -1 0 4: 11 / sqrt(5 * 26) = 0.964764
    ("linearish", [1, 2, 3, 4], [2, 4, 5, 9], 0.9647638, 1.0),
    # monotone but not linear: Spearman 1; dy = -276.75 -267.75 -177.75 722.25: 1543.5 / sqrt(5 * 701520.75)
    ("monotone", [1, 2, 3, 4], [1, 10, 100, 1000], 0.8241407, 1.0),
    # ties: ranks x = 1 2.5 2.5 4, y = 1 3 2 4: 4.5 / sqrt(4.5 * 5) = 0.948683
    ("ties", [1, 2, 2, 3], [1, 3, 2, 4], 0.9486833, 0.9486833),
    ("decreasing", [1, 2, 3], [3, 2, 1], -1.0, -1.0),
    ("constant", [1, 1, 1], [1, 2, 3], math.nan, math.nan),
    ("one_pair", [1], [2], math.nan, math.nan),
]


@parameterized.expand(CORRELATION_CASES)
def test_correlations(_, x, y, r, rho):
    assert pearson(x, y) == pytest.approx(r, abs=1e-6, nan_ok=True)
    assert spearman(x, y) == pytest.approx(rho, abs=1e-6, nan_ok=True)


ROBUST_Z_CASES = [
    # median 3, |x - 3| = 2 1 0 1 97: MAD 1, z = 0.6745 (x - 3)
    ("mad", [1, 2, 3, 4, 100], [-1.349, -0.6745, 0.0, 0.6745, 65.4265], ["ok", "ok", "ok", "ok", "outlier"]),
    # MAD 0: mean absolute deviation 0.2, z = (x - 1) / (1.2533 * 0.2)
    ("mad_zero", [1, 1, 1, 1, 2], [0, 0, 0, 0, 3.98947], ["ok", "ok", "ok", "ok", "outlier"]),
    ("all_equal", [0.3, 0.3, 0.3], [0, 0, 0], ["ok", "ok", "ok"]),
    # a low score is never flagged; no score (nothing predicted) is "empty"
    ("low_and_empty", [0.5, 0.5, 0.6, 0.4, 0.0, None], [0, 0, 0.6745, -0.6745, -3.3725, math.nan],
     ["ok", "ok", "ok", "ok", "ok", "empty"]),
]  # fmt: skip


@parameterized.expand(ROBUST_Z_CASES)
def test_robust_z_and_flags(_, scores, z, flags):
    got_flags, got_z = flag_cases(scores)
    np.testing.assert_allclose(got_z, z, atol=1e-3)
    assert got_flags == flags
    np.testing.assert_allclose(robust_z_scores([math.nan if s is None else s for s in scores]), z, atol=1e-3)


def test_flag_threshold():
    assert flag_cases([1, 2, 3, 4, 8], threshold=3.0)[0][-1] == "outlier"  # z = 0.6745 * 5 = 3.37
    assert flag_cases([1, 2, 3, 4, 8])[0][-1] == "ok"


def test_case_agreement_by_hand():
    reference = np.zeros((4, 4, 2), np.int64)
    reference[:2, :2, 0] = 1  # 4 voxels of class 1
    reference[2:, 2:, :] = 2  # 8 voxels of class 2
    predicted = reference.copy()
    predicted[0, 0, 0] = 0  # class 1: TP 3, FN 1 -> Dice 6 / 7
    predicted[0, 3, 1] = 2  # class 2: TP 8, FP 1 -> Dice 16 / 17
    got = case_agreement(predicted.astype(np.uint8), reference, 0.5, NAMES)
    assert got["CSF/other brain"] == pytest.approx({"dice": 6 / 7, "reference_ml": 2.0, "difference_ml": -0.5})
    assert got["grey matter"] == pytest.approx({"dice": 16 / 17, "reference_ml": 4.0, "difference_ml": 0.5})
    absent = case_agreement(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.int64), 1.0, NAMES)
    assert math.isnan(absent["grey matter"]["dice"]) and absent["grey matter"]["difference_ml"] == 0


def test_write_volume_table_is_atomic_and_readable(tmp_path):
    columns = volume_table_columns(NAMES, agreement=False)
    assert columns[:6] == ["case", "input", "status", "error", "slices", "seconds"]
    assert "volume_ml_CSF/other brain" in columns and "volume_ml_background" not in columns
    path = tmp_path / "volumes.csv"
    rows = [
        {"case": "a", "input": "scans/a, b.nii.gz", "status": "ok", "slices": 3, "volume_ml_grey matter": 1.5,
         "uncertainty": math.nan, "flag": "empty"},
        {"case": "b", "input": "b.nii.gz", "status": "failed", "error": 'b.nii.gz: "corrupt"\nsecond line',
         "flag": "failed"},
    ]  # fmt: skip
    write_volume_table(path, rows, columns)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["case"] for r in read] == ["a", "b"] and list(read[0]) == columns
    assert read[0]["input"] == "scans/a, b.nii.gz" and read[0]["volume_ml_grey matter"] == "1.5"
    assert read[0]["uncertainty"] == "" and read[1]["error"] == 'b.nii.gz: "corrupt"\nsecond line'
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not in the table"):
        write_volume_table(path, [*rows, {"case": "c", "surprise": 1}], columns)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["volumes.csv"]  # untouched, no temp file left


def test_reference_labels_from_a_folder_and_a_dataset_json(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(b"")
    (folder / ".hidden.nii.gz").write_bytes(b"")
    labels = reference_labels(folder)
    assert labels == {"a.nii.gz": str(folder / "a.nii.gz")}
    assert label_for(labels, "/anywhere/a.nii.gz") == str(folder / "a.nii.gz")
    assert label_for(labels, "/anywhere/b.nii.gz") is None
    description = {"training": [{"image": "./imagesTr/x_1.nii.gz", "label": "./labelsTr/x_1.nii.gz"}], "test": []}
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    labels = reference_labels(tmp_path / "dataset.json")
    expected = str(tmp_path / "labelsTr" / "x_1.nii.gz")
    assert label_for(labels, tmp_path / "imagesTr" / "x_1.nii.gz") == expected
    assert label_for(labels, tmp_path / "copy" / "x_1.nii.gz") == expected  # by file name
    (tmp_path / "unlabelled.json").write_text(json.dumps({"training": [], "test": ["a.nii.gz"]}))
    with pytest.raises(ValueError, match="unlabelled.json: no 'training' entries with a 'label'"):
        reference_labels(tmp_path / "unlabelled.json")
    with pytest.raises(FileNotFoundError, match="nothere"):
        reference_labels(tmp_path / "nothere")


def test_read_label_map_checks_shape_and_classes(tmp_path):
    good = save_nifti(tmp_path / "good.nii.gz", np.array([[[0, 1], [2, 1]]], np.float32), RAS)
    np.testing.assert_array_equal(read_label_map(good, (1, 2, 2), 3), [[[0, 1], [2, 1]]])
    with pytest.raises(ValueError, match=r"good.nii.gz: label shape \(1, 2, 2\) differs from the image's \(2, 2, 2\)"):
        read_label_map(good, (2, 2, 2), 3)
    with pytest.raises(ValueError, match=r"good.nii.gz: label values 0..2 outside 0..1"):
        read_label_map(good, (1, 2, 2), 2)


def test_agreement_report(tmp_path):
    rows = [
        {
            key: value
            for n in NAMES[1:]
            for key, value in ((f"volume_ml_{n}", p), (f"reference_ml_{n}", r), (f"dice_{n}", d))
        }
        for p, r, d in ((10, 9, 0.9), (12, 12, 0.8), (14, 15, 0.7), (20, 17, 0.6))
    ]
    stats = agreement_statistics(rows, NAMES)
    assert stats["grey matter"]["bias"] == pytest.approx(0.75) and stats["grey matter"]["mean_dice"] == pytest.approx(
        0.75
    )
    report = write_agreement_report(tmp_path, rows, NAMES, title="demo")
    text = (tmp_path / "agreement.md").read_text()
    assert "| grey matter | 4 | 0.750 | 0.750 | 1.708 | -2.597 | 4.097 |" in text
    assert set(report["plots"]) == set(NAMES[1:])
    for path in report["plots"].values():
        assert os.path.getsize(path) > 1000 and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"]({os.path.basename(path)})" in text
    json.dumps(json_safe(report["statistics"]), allow_nan=False)


def test_json_safe():
    assert json_safe({"a": [1.0, math.nan, np.float64(math.inf)], "b": "x"}) == {"a": [1.0, None, None], "b": "x"}

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from onenet_med.cli import main
from onenet_med.data import DataValidationError, check_dataset, detect_layout, get_datalists, validate_datalist
from tests.data_trees import (
    make_msd_task,
    make_pets_tree,
    make_voc_tree,
    save_nifti,
    save_palette_png,
    voc_label,
)

SHAPE = (16, 16, 6)


@pytest.fixture
def heart(tmp_path):
    return make_msd_task(tmp_path, "heart", n_train=3, n_test=1, shape=SHAPE)


def _img(task, i=0):
    return task / "imagesTr" / f"case_{i:03d}.nii.gz"


def _lab(task, i=0):
    return task / "labelsTr" / f"case_{i:03d}.nii.gz"


def _label_with(task, value, dtype=np.uint8):
    lab = np.asanyarray(nib.load(_lab(task)).dataobj).astype(dtype)
    lab[0, 0, 0] = value
    save_nifti(_lab(task), lab)


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _image_with(task, value):
    img = np.asanyarray(nib.load(_img(task)).dataobj).astype(np.float32)
    img[1, 1, 1] = value
    save_nifti(_img(task), img)


MSD_CASES = [  # id, mutation, severity, file, message part
    ("missing", lambda t: os.remove(_lab(t)), "error", "labelsTr/case_000", "file listed but missing"),
    ("missing_test", lambda t: os.remove(t / "imagesTs" / "case_003.nii.gz"), "error", "imagesTs/case_003",
     "file listed but missing"),
    ("unreadable", lambda t: open(_img(t), "wb").write(b"not a nifti at all"), "error", "imagesTr/case_000",
     "unreadable image"),
    ("corrupt", lambda t: _truncate(_img(t)), "error", "imagesTr/case_000", "corrupt image data"),
    ("shape", lambda t: save_nifti(_lab(t), np.ones((16, 15, 6), np.uint8)), "error", "labelsTr/case_000",
     "label shape (16, 15, 6) != image shape (16, 16, 6)"),
    ("affine", lambda t: save_nifti(_lab(t), np.asanyarray(nib.load(_lab(t)).dataobj), np.eye(4)), "error",
     "labelsTr/case_000", "label affine differs"),
    ("channels", lambda t: save_nifti(_img(t), np.ones((*SHAPE, 2), np.float32)), "error", "imagesTr/case_000",
     "2 channel(s), task heart expects 1"),
    ("label_range", lambda t: _label_with(t, 5), "error", "labelsTr/case_000",
     "label values [5] outside the task's classes 0..1"),
    ("label_float", lambda t: _label_with(t, 0.5, np.float32), "error", "labelsTr/case_000", "non-integer"),
    ("nan", lambda t: _image_with(t, np.nan), "error", "imagesTr/case_000", "1 NaN/inf voxel(s)"),
    ("inf", lambda t: _image_with(t, np.inf), "error", "imagesTr/case_000", "1 NaN/inf voxel(s)"),
    ("empty", lambda t: save_nifti(_lab(t), np.zeros(SHAPE, np.uint8)), "warning", "labelsTr/case_000",
     "empty label"),
]  # fmt: skip


@pytest.mark.parametrize("case,mutate,severity,fname,message", MSD_CASES, ids=[c[0] for c in MSD_CASES])
def test_msd_problem_cases(heart, case, mutate, severity, fname, message):
    assert check_dataset(heart).problems == []
    mutate(heart)
    report = check_dataset(heart)
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    p = report.problems[0]
    assert (p.severity, message in p.message, fname in p.path) == (severity, True, True), str(p)
    assert report.ok == (severity == "warning")


def test_every_problem_is_listed_and_cli_exit_code(heart, capsys):
    os.remove(_lab(heart, 1))
    save_nifti(_img(heart, 2), np.ones((*SHAPE, 2), np.float32))
    _image_with(heart, np.nan)
    save_nifti(_lab(heart, 0), np.zeros(SHAPE, np.uint8))
    assert main(["data", "check", str(heart.parent)]) == 1
    out = capsys.readouterr().out
    assert "ERROR: " + str(_lab(heart, 1)) + ": file listed but missing" in out
    assert "ERROR: " + str(_img(heart, 2)) + ": 2 channel(s)" in out
    assert "ERROR: " + str(_img(heart, 0)) + ": 1 NaN/inf voxel(s)" in out
    assert "WARNING: " + str(_lab(heart, 0)) + ": empty label" in out
    assert "3 error(s), 1 warning(s)" in out
    assert main(["data", "check", str(heart), "--no-warnings", "--quick"]) == 1  # header level: no NaN check
    out = capsys.readouterr().out
    assert "NaN" not in out and "WARNING" not in out and "2 error(s)" in out


def test_clean_tree_passes_via_subprocess(heart, subprocess_env):
    res = subprocess.run(
        [sys.executable, "-m", "onenet_med", "data", "check", str(heart)], env=subprocess_env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "msd layout, task heart, 4 item(s) checked: 0 error(s), 0 warning(s)" in res.stdout


def test_dataset_json_problems(heart, capsys):
    meta = json.loads((heart / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI", "1": "T2"}
    meta["numTraining"] = 7
    (heart / "dataset.json").write_text(json.dumps(meta))
    msgs = [str(p) for p in check_dataset(heart).problems]
    assert any("'modality' lists 2 channel(s), task heart expects 1" in m for m in msgs)
    assert any("WARNING" in m and "numTraining is 7 but 3" in m for m in msgs)
    (heart / "dataset.json").write_text("{oops")
    report = check_dataset(heart)
    assert not report.ok and "not valid JSON" in report.problems[0].message


def test_check_against_another_task_and_brain(tmp_path):
    heart = make_msd_task(tmp_path / "h", "heart", n_train=2, n_test=0, shape=SHAPE)
    report = check_dataset(heart, task="brain")
    # 2 images + dataset.json's 'modality' (channels) and 'labels' (classes)
    assert sum("task brain expects 4" in p.message for p in report.errors) == 2 + 2
    brain = make_msd_task(tmp_path / "b", "brain", n_train=2, n_test=1, shape=SHAPE)
    assert check_dataset(brain).problems == [] and check_dataset(brain).task == "brain"


def test_validate_datalist_before_training(heart):
    lists = get_datalists("heart", heart)
    assert validate_datalist("heart", lists["train"] + lists["validation"]) == []
    save_nifti(_lab(heart, 0), np.ones((16, 15, 6), np.uint8))
    _image_with(heart, np.nan)  # not seen at header level
    with pytest.raises(DataValidationError) as exc:
        validate_datalist("heart", lists["train"] + lists["validation"])
    assert len(exc.value.problems) == 1 and str(_lab(heart, 0)) in str(exc.value) and "label shape" in str(exc.value)
    with pytest.raises(DataValidationError, match="NaN"):
        validate_datalist("heart", lists["train"] + lists["validation"], level="full", num_workers=2)


def test_detect_layout(tmp_path, heart):
    assert detect_layout(heart.parent) == ("msd", heart)
    assert detect_layout(heart) == ("msd", heart)
    voc = make_voc_tree(tmp_path / "v")
    assert detect_layout(tmp_path / "v") == ("voc", voc)
    pets = make_pets_tree(tmp_path / "p")
    assert detect_layout(tmp_path / "p") == ("pets", pets)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MSD task"):
        detect_layout(tmp_path / "empty")
    assert main(["data", "check", str(tmp_path / "empty")]) == 1


def _voc_first(voc, suffix):
    return voc / ("JPEGImages" if suffix == "jpg" else "SegmentationClass") / f"2007_000000.{suffix}"


VOC_CASES = [
    ("missing_jpg", lambda v: os.remove(_voc_first(v, "jpg")), "error", "file listed but missing"),
    ("corrupt_png", lambda v: open(_voc_first(v, "png"), "wb").write(b"\x89PNG garbage"), "error",
     "unreadable or corrupt"),
    ("rgb_label", lambda v: Image.new("RGB", (32, 24)).save(_voc_first(v, "png")), "error",
     "label mode RGB: expected a palette/index PNG"),
    ("size", lambda v: save_palette_png(_voc_first(v, "png"), voc_label(20, 32, 1)), "error",
     "label size (32, 20) != image size (32, 24)"),
    ("values", lambda v: save_palette_png(_voc_first(v, "png"), voc_label(24, 32, 30)), "error",
     "label values [30] outside the task's classes 0..20 (+ 255 void)"),
    ("void_only", lambda v: save_palette_png(_voc_first(v, "png"), np.full((24, 32), 255, np.uint8)), "warning",
     "empty label"),
]  # fmt: skip


@pytest.mark.parametrize("case,mutate,severity,message", VOC_CASES, ids=[c[0] for c in VOC_CASES])
def test_voc_problem_cases(tmp_path, case, mutate, severity, message):
    voc = make_voc_tree(tmp_path)
    assert check_dataset(tmp_path).problems == []  # void borders (255) are allowed
    mutate(voc)
    report = check_dataset(tmp_path)
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    assert report.problems[0].severity == severity and message in report.problems[0].message
    assert "2007_000000" in report.problems[0].path


def test_pets_problem_cases(tmp_path):
    pets = make_pets_tree(tmp_path)
    report = check_dataset(tmp_path)
    assert report.task == "petf" and report.ok and len(report.problems) == 1  # greyscale JPEG: warning only
    assert report.problems[0].severity == "warning" and "mode L, converted to RGB" in report.problems[0].message
    tri = pets / "annotations" / "trimaps"
    Image.fromarray(np.full((24, 30), 4, np.uint8), mode="L").save(tri / "Bengal_3.png")
    Image.fromarray(np.full((24, 30), 2, np.uint8), mode="L").save(tri / "pug_5.png")
    os.remove(tri / "Abyssinian_2.png")
    msgs = sorted(str(p) for p in check_dataset(tmp_path).problems)
    assert any("Bengal_3.png: trimap values [4] outside 1 (pet)" in m for m in msgs)
    assert any("WARNING" in m and "pug_5.png: empty label" in m for m in msgs)
    assert any("Abyssinian_2.png: file listed but missing" in m for m in msgs)
    (pets / "annotations" / "list.txt").write_text("Abyssinian_1 99 1 1\n")
    report = check_dataset(tmp_path)
    assert not report.ok and "class id 99 outside 1..37" in report.problems[0].message


def test_data_command_without_action_prints_help(capsys):
    assert main(["data"]) == 2
    assert "check" in capsys.readouterr().out

import json

import nibabel as nib
import numpy as np
import pytest

from onenet_med.cli import main
from onenet_med.data import build_demo_dataset, check_dataset, get_datalists, get_task, get_transforms
from onenet_med.data.demo import demo_source_paths, tissue_labels


def test_tissue_labels_hand_computed():
    t1 = np.array([0, 10, 10, 10, 10], np.uint8)
    gm = np.array([200, 200, 20, 100, 0], np.uint8)  # scaled by its max (200)
    wm = np.array([0, 0, 160, 60, 0], np.uint8)  # scaled by its max (160)
    # p = (csf, gm, wm): voxel 1 (0, 1, 0) -> GM; 2 (0, .1, 1) -> WM; 3 (.125, .5, .375) -> GM; 4 (1, 0, 0) -> CSF
    assert tissue_labels(t1, gm, wm).tolist() == [0, 2, 3, 2, 1]
    with pytest.raises(ValueError, match="same shape"):
        tissue_labels(t1, gm[:3], wm)


@pytest.fixture(scope="module")
def demo_step3(tmp_path_factory):
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "Task00_MNI152Tissue", n_cases=4, step=3)


def test_demo_layout_geometry_and_label_sanity(demo_step3):
    meta = json.loads((demo_step3 / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["labels"]["3"] == "white matter" and meta["test"] == []
    src = nib.load(demo_source_paths()["t1"])
    counts = np.zeros(4, np.int64)
    z_next = None
    for entry in meta["training"]:
        img = nib.load(demo_step3 / entry["image"])
        lab = nib.load(demo_step3 / entry["label"])
        assert img.shape[:2] == (66, 78) and img.shape == lab.shape  # 197 x 233 at step 3
        np.testing.assert_allclose(img.affine, lab.affine)
        np.testing.assert_allclose(np.diag(img.affine)[:3], 3 * np.diag(src.affine)[:3])
        if z_next is not None:  # contiguous slabs, each keeping its place in MNI space
            assert img.affine[2, 3] == pytest.approx(z_next)
        z_next = img.affine[2, 3] + 3 * img.shape[2]
        data = np.asanyarray(lab.dataobj)
        counts += np.bincount(data.ravel(), minlength=4)
        assert set(np.unique(data)) <= {0, 1, 2, 3}
        assert np.all((np.asanyarray(img.dataobj) > 0) == (data > 0))  # labels 0 exactly outside the brain
    brain = counts[1:].sum()
    csf, gm, wm = counts[1:] / brain
    assert 0.03 < csf < 0.2 and 0.45 < gm < 0.7 and 0.25 < wm < 0.45, (csf, gm, wm)
    assert brain * 27 == pytest.approx(1.89e6, rel=0.1)  # ~1.9 L of brain at 1 mm^3 per voxel


def test_demo_passes_check_splits_by_case_and_transforms(demo_step3):
    assert check_dataset(demo_step3).problems == []
    lists = get_datalists("demo", demo_step3, val_fraction=0.2, seed=0)
    assert len(lists["train"]) == 3 and len(lists["validation"]) == 1
    assert not {i["case_id"] for i in lists["train"]} & {i["case_id"] for i in lists["validation"]}
    val = get_transforms("demo", "validate")(lists["validation"][0])
    assert val["image"].shape[:3] == (1, 96, 96)  # 66 x 78 native, padded to multiples of 32
    assert set(val["label"].unique().tolist()) == {0, 1, 2, 3}


def test_demo_cli_and_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "demo", "--out", str(out), "--step", "4", "--n-cases", "2"]) == 0
    assert len(list((out / "imagesTr").iterdir())) == 2
    assert main(["data", "demo", "--out", str(out), "--step", "4"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "demo", "--out", str(out), "--step", "4", "--overwrite"]) == 0
    assert len(list((out / "imagesTr").iterdir())) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(ValueError, match="n_cases"):
        build_demo_dataset(tmp_path / "x", n_cases=1)


def test_demo_full_resolution(tmp_path):
    task = build_demo_dataset(tmp_path / "demo")
    lists = get_datalists("demo", task)
    item = lists["validation"][0]
    assert nib.load(item["image"]).shape[:2] == (197, 233)
    out = get_transforms("demo", "validate")(item)
    assert out["image"].shape[:3] == (1, 224, 256)
    assert check_dataset(task).ok


def test_demo_intensity_stats_are_the_templates_whole_brain_statistics():
    t1 = np.asanyarray(nib.load(demo_source_paths()["t1"]).dataobj).astype(np.float64)
    brain = t1[t1 > 0]
    mean, std = get_task("demo").intensity_stats
    assert mean == pytest.approx(brain.mean(), abs=0.05) and std == pytest.approx(brain.std(), abs=0.05)

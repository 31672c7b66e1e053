import hashlib
import json
import os
import tarfile

import numpy as np
import pytest
from monai.apps import DecathlonDataset

from onenet_med.cli import main
from onenet_med.data import download_msd, get_datalists, split_cases
from onenet_med.data.msd import (
    case_id_from_path,
    common_slice_size,
    find_msd_task_dir,
    ras_slice_size,
    spec_from_dataset_json,
)
from tests.data_trees import CUSTOM_TASK, make_msd_task, save_nifti


@pytest.fixture
def heart10(tmp_path):
    return make_msd_task(tmp_path, "heart", n_train=10, n_test=2, shape=(8, 8, 4))


@pytest.mark.parametrize("where", ["task", "parent"])
def test_datalists_paths_and_case_ids(heart10, where):
    lists = get_datalists("heart", heart10 if where == "task" else heart10.parent)
    assert [len(lists[k]) for k in ("train", "validation", "test")] == [8, 2, 2]
    for item in lists["train"] + lists["validation"]:
        assert os.path.isabs(item["image"]) and os.path.isfile(item["image"]) and os.path.isfile(item["label"])
        assert item["case_id"] == os.path.basename(item["image"])[: -len(".nii.gz")]
        assert "imagesTr" in item["image"] and "labelsTr" in item["label"]
    assert all("label" not in it and "imagesTs" in it["image"] for it in lists["test"])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_by_patient_reproducible_and_same_as_monai(heart10, seed):
    lists = get_datalists("heart", heart10.parent, val_fraction=0.2, seed=seed)
    train_ids = {it["case_id"] for it in lists["train"]}
    val_ids = {it["case_id"] for it in lists["validation"]}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 10
    again = get_datalists("heart", heart10.parent, val_fraction=0.2, seed=seed)
    assert [it["case_id"] for it in again["validation"]] == [it["case_id"] for it in lists["validation"]]
    # the split is MONAI DecathlonDataset's for the same seed
    for section, ours in (("validation", lists["validation"]), ("training", lists["train"])):
        ref = DecathlonDataset(
            heart10.parent, "Task02_Heart", section, seed=seed, val_frac=0.2, cache_rate=0.0, progress=False
        )
        assert [case_id_from_path(d["image"]) for d in ref.data] == [it["case_id"] for it in ours]


def test_split_depends_on_seed_and_keeps_one_validation_case():
    items = [{"image": f"c{i}"} for i in range(10)]
    splits = {tuple(d["image"] for d in split_cases(items, 0.3, s)[1]) for s in range(5)}
    assert len(splits) > 1
    train, val = split_cases(items[:4], 0.2, 0)  # int(4 * 0.2) = 0 -> still one validation case
    assert len(val) == 1 and len(train) == 3
    assert split_cases(items, 0.0, 0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(items, 1.0, 0)


def test_missing_files_named(heart10):
    os.remove(heart10 / "labelsTr" / "case_001.nii.gz")
    os.remove(heart10 / "imagesTs" / "case_011.nii.gz")
    with pytest.raises(FileNotFoundError) as exc:
        get_datalists("heart", heart10)
    msg = str(exc.value)
    assert "2 listed file(s) missing" in msg and "labelsTr/case_001.nii.gz" in msg and "imagesTs/case_011.nii.gz" in msg
    assert str(heart10 / "dataset.json") in msg


def test_missing_or_bad_dataset_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="Task02_Heart/dataset.json.*onenet-med data download"):
        get_datalists("heart", tmp_path)
    task = tmp_path / "Task02_Heart"
    task.mkdir()
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        get_datalists("heart", tmp_path)
    (task / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="no 'training' list"):
        get_datalists("heart", tmp_path)


def test_find_task_dir_and_generic_spec(tmp_path):
    task = make_msd_task(tmp_path, "lung", n_train=2, n_test=0, shape=(6, 6, 3))
    assert find_msd_task_dir("lung", tmp_path) == task
    assert spec_from_dataset_json(task).name == "lung"
    renamed = tmp_path / "MyTask"
    task.rename(renamed)
    assert spec_from_dataset_json(renamed).name == "lung"  # recognised from dataset.json "name"
    meta = json.loads((renamed / "dataset.json").read_text())
    meta["name"] = "Spleen"
    meta["modality"] = {"0": "CT"}
    meta["labels"] = {"0": "background", "1": "spleen", "2": "other"}
    (renamed / "dataset.json").write_text(json.dumps(meta))
    spec = spec_from_dataset_json(renamed)
    assert (spec.name, spec.in_channels, spec.num_classes, spec.modality) == ("MyTask", 1, 3, "ct")


def test_generic_spec_of_an_unregistered_task(tmp_path):
    task = make_msd_task(tmp_path, CUSTOM_TASK, n_train=1, n_test=0, shape=(6, 6, 3))
    spec = spec_from_dataset_json(task)
    assert (spec.name, spec.in_channels, spec.channel_names) == ("Task99_Custom", 2, ("T1", "T2"))
    assert (spec.num_classes, spec.class_names, spec.modality) == (3, ("background", "core", "rim"), "mri")
    assert spec.spatial_size is None and spec.divisible_k == 32  # native size, padded to a multiple of 32


@pytest.mark.parametrize(
    "key,entries,message",
    [
        ("labels", {"0": "background", "2": "a"}, r"'labels' keys must be 0\.\.1"),
        ("labels", {"1": "a", "2": "b"}, r"'labels' keys must be 0\.\.1"),
        ("labels", {"0": "background", "x": "a"}, r"'labels' keys must be 0\.\.1"),
        ("labels", {"0": "background"}, r"'labels' lists 1 class"),
        ("modality", {"0": "T1", "3": "T2"}, r"'modality' keys must be 0\.\.1"),
        ("modality", ["T1"], r"'modality' must map"),
    ],
)
def test_generic_spec_rejects_bad_numbering(tmp_path, key, entries, message):
    task = make_msd_task(tmp_path, CUSTOM_TASK, n_train=1, n_test=0, shape=(6, 6, 3))
    meta = json.loads((task / "dataset.json").read_text())
    meta[key] = entries
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as error:
        spec_from_dataset_json(task)
    assert str(task / "dataset.json") in str(error.value)


def test_ras_slice_size_and_common_size(tmp_path):
    # the file's first axis is superior-inferior: after RAS orientation the axial slice is (axis 1, axis 2)
    permuted = np.array([[0.0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    a = save_nifti(tmp_path / "a.nii.gz", np.zeros((5, 20, 30), np.float32), permuted)
    b = save_nifti(tmp_path / "b.nii.gz", np.zeros((24, 18, 7, 2), np.float32), np.eye(4))  # channels last
    assert ras_slice_size(a) == (20, 30) and ras_slice_size(b) == (24, 18)
    assert common_slice_size([{"image": a}, {"image": [b]}]) == (24, 30)
    assert common_slice_size([{"image": a}, {"image": a}]) is None  # one size: nothing to pad


def _tarball(tmp_path, spec_name="heart"):
    src = tmp_path / "src"
    task = make_msd_task(src, spec_name, n_train=3, n_test=1, shape=(6, 6, 3))
    tar_path = tmp_path / "fixture.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(task, arcname=task.name)
    md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    return tar_path, md5


def test_download_offline_from_local_tarball(tmp_path, monkeypatch):
    tar_path, md5 = _tarball(tmp_path)
    monkeypatch.setitem(DecathlonDataset.resource, "Task02_Heart", tar_path.as_uri())
    monkeypatch.setitem(DecathlonDataset.md5, "Task02_Heart", md5)
    root = tmp_path / "data"
    task_dir = download_msd("heart", root, progress=False)
    assert task_dir == root / "Task02_Heart" and (root / "Task02_Heart.tar").is_file()
    lists = get_datalists("heart", root)
    assert len(lists["train"]) + len(lists["validation"]) == 3 and len(lists["test"]) == 1
    # already there: no second download (a broken URL is never touched)
    monkeypatch.setitem(DecathlonDataset.resource, "Task02_Heart", (tmp_path / "nope.tar").as_uri())
    assert download_msd("heart", root, progress=False) == task_dir


def test_download_md5_mismatch_and_cli(tmp_path, monkeypatch, capsys):
    tar_path, md5 = _tarball(tmp_path)
    monkeypatch.setitem(DecathlonDataset.resource, "Task02_Heart", tar_path.as_uri())
    monkeypatch.setitem(DecathlonDataset.md5, "Task02_Heart", "0" * 32)
    with pytest.raises(ValueError, match="md5 hash check"):
        download_msd("heart", tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "Task02_Heart").exists()
    monkeypatch.setitem(DecathlonDataset.md5, "Task02_Heart", md5)
    assert main(["data", "download", "--task", "heart", "--root", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "Task02_Heart" / "dataset.json").is_file()
    assert main(["data", "download", "--task", "voc", "--root", str(tmp_path / "cli")]) == 1
    assert "not a downloadable MSD task" in capsys.readouterr().err


def test_official_urls_are_monais():
    assert DecathlonDataset.resource["Task02_Heart"].endswith("/Task02_Heart.tar")
    assert len(DecathlonDataset.md5["Task06_Lung"]) == 32

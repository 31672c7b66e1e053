"""The small factories the bundle configs call."""

from pathlib import Path

import pytest
import torch
from monai.inferers import SimpleInferer, SliceInferer

from onenet_med.bundle import workflow as ob
from onenet_med.data import DataValidationError
from tests.data_trees import make_msd_task, save_nifti


@pytest.mark.parametrize(
    "bundle,task,folder",
    [
        ("onenet_heart", "heart", "Task02_Heart"),
        ("onenet_brain", "brain", "Task01_BrainTumour"),
        ("onenet_lung", "lung", "Task06_Lung"),
        ("onenet_voc", "voc", "VOCdevkit/VOC2012"),
        ("onenet_pets", "pets", "oxford-iiit-pet"),
    ],
)
def test_bundle_task_and_default_dataset_dir(bundle, task, folder):
    assert ob.bundle_task(bundle) == task
    assert ob.default_dataset_dir(task) == str(ob.repo_root() / "data" / folder)
    assert ob.bundle_root(bundle) == str(ob.repo_root() / "bundles" / bundle)


def test_unknown_bundle_task_lists_known_tasks():
    with pytest.raises(KeyError, match="known tasks: .*heart"):
        ob.bundle_task("onenet_spleen")


def test_inferer_slices_volumes_along_the_last_axis():
    inferer = ob.get_inferer("heart", sw_batch_size=3)
    assert isinstance(inferer, SliceInferer) and inferer.spatial_dim == 2
    net = torch.nn.Conv2d(1, 2, 1)
    volume = torch.randn(1, 1, 10, 12, 5)
    out = inferer(volume, net)
    assert out.shape == (1, 2, 10, 12, 5)
    for z in range(5):  # slice z of the output is the network applied to slice z of the input
        torch.testing.assert_close(out[..., z], net(volume[..., z]), atol=1e-6, rtol=1e-6)
    assert isinstance(ob.get_inferer("voc"), SimpleInferer)


def test_prepare_datalists_checks_every_split(tmp_path):
    task_dir = make_msd_task(tmp_path, "heart", n_train=4, n_test=1)
    lists = ob.prepare_datalists("heart", task_dir, val_fraction=0.25, seed=0, check="full")
    assert len(lists["train"]) == 3 and len(lists["validation"]) == 1
    bad = Path(lists["validation"][0]["label"])
    save_nifti(bad, (2 * torch.ones(20, 24, 12)).numpy().astype("uint8"))  # class 2 does not exist in Heart
    with pytest.raises(DataValidationError, match=bad.name):
        ob.prepare_datalists("heart", task_dir, val_fraction=0.25, seed=0, check="full")
    ob.prepare_datalists("heart", task_dir, val_fraction=0.25, seed=0, check="none")  # opt-out


def test_inference_datalist_from_files_folders_and_test_split(tmp_path):
    task_dir = make_msd_task(tmp_path, "heart", n_train=2, n_test=2)
    test_files = sorted(str(p) for p in (task_dir / "imagesTs").iterdir())
    assert [d["image"] for d in ob.inference_datalist("heart", task_dir)] == test_files
    assert [d["image"] for d in ob.inference_datalist("heart", None, [str(task_dir / "imagesTs")])] == test_files
    assert [d["image"] for d in ob.inference_datalist("heart", None, test_files[:1])] == test_files[:1]
    with pytest.raises(FileNotFoundError):
        ob.inference_datalist("heart", tmp_path / "missing")
    with pytest.raises(DataValidationError, match="missing.nii.gz"):
        ob.inference_datalist("heart", None, [str(tmp_path / "missing.nii.gz")])

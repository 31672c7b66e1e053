"""The small factories the bundle configs call."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer, SliceInferer

from onenet_med.bundle import workflow as ob
from onenet_med.data import DataValidationError
from tests.data_trees import CUSTOM_TASK, make_msd_task, save_nifti
from tests.inference_helpers import BUNDLES


@pytest.mark.parametrize(
    "bundle,task,folder",
    [
        ("onenet_heart", "heart", "Task02_Heart"),
        ("onenet_brain", "brain", "Task01_BrainTumour"),
        ("onenet_lung", "lung", "Task06_Lung"),
        ("onenet_voc", "voc", "VOCdevkit/VOC2012"),
        ("onenet_pets", "pets", "oxford-iiit-pet"),
        ("onenet_demo", "demo", "Task00_MNI152Tissue"),
        ("onenet_msd", "msd", "msd"),
    ],
)
def test_bundle_task_and_default_dataset_dir(tmp_path, bundle, task, folder):
    assert ob.bundle_task(bundle) == task
    # a bundle inside a checkout reads <checkout>/data; an extracted one its own data/ (first when both exist)
    in_checkout = tmp_path / "checkout" / "bundles" / bundle
    assert ob.default_dataset_dir(task, in_checkout) == str(tmp_path / "checkout" / "data" / folder)
    (in_checkout / "data" / folder).mkdir(parents=True)
    assert ob.default_dataset_dir(task, in_checkout) == str(in_checkout / "data" / folder)
    extracted = tmp_path / "downloads" / bundle
    assert ob.default_dataset_dir(task, extracted) == str(extracted / "data" / folder)


def test_bundle_root_is_the_folder_of_the_running_configs(tmp_path, monkeypatch):
    """Wherever the bundle lives, whatever the working directory; a bare ConfigParser gets the current directory."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    copy = tmp_path / "somewhere" / "my_bundle"
    shutil.copytree(BUNDLES / "onenet_heart", copy)
    monkeypatch.chdir(tmp_path)
    for configs in (["train.json"], ["train.json", "evaluate.json"], ["inference.json"]):
        wf = ConfigWorkflow(config_file=[str(copy / "configs" / c) for c in configs], logging_file=False)
        wf.initialize()
        assert wf.bundle_root == str(copy)  # resolved inside the workflow (as in run and check_properties)
        assert wf.parser.get_parsed_content("output_dir") == str(copy / "output")
        assert wf.parser.get_parsed_content("ckpt_dir") == str(copy / "models")
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.json"))
    assert parser.get_parsed_content("bundle_root") == str(tmp_path)


def test_is_main_process_without_a_process_group():
    assert ob.is_main_process()


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
    with pytest.raises(DataValidationError, match="missing.nii.gz"):
        ob.inference_datalist("heart", None, [str(tmp_path / "missing.nii.gz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to predict: no images in"):
        ob.inference_datalist("heart", None, [str(tmp_path / "empty")])
    # no data at all: an empty list (the properties resolve) and the run stops with the reason
    assert ob.inference_datalist("heart", tmp_path / "missing") == []
    with pytest.raises(FileNotFoundError, match="no input_files given and dataset_dir .*missing' does not exist"):
        ob.require_inputs([], None, tmp_path / "missing")
    no_test = make_msd_task(tmp_path / "other", "heart", n_train=1, n_test=0)
    with pytest.raises(ValueError, match="lists no test images: pass --input_files"):
        ob.require_inputs(ob.inference_datalist("heart", no_test), None, no_test)
    ob.require_inputs([{"image": test_files[0]}], None, None)


def test_resolve_task_registered_generic_and_trained(tmp_path, caplog):
    from onenet_med.bundle.record import build_network, read_task_record, task_record, write_task_record
    from onenet_med.data import GENERIC_MSD, get_task

    assert ob.resolve_task("heart", tmp_path / "anything") is get_task("heart")
    # generic: from the dataset.json; volumes of different in-plane size -> slices padded to the largest
    task_dir = make_msd_task(tmp_path, CUSTOM_TASK, n_train=2, n_test=0, shape=(20, 24, 12))
    save_nifti(task_dir / "imagesTr" / "case_001.nii.gz", np.ones((26, 18, 12, 2), np.float32))
    spec = ob.resolve_task("msd", task_dir)
    assert (spec.name, spec.in_channels, spec.class_names) == ("Task99_Custom", 2, ("background", "core", "rim"))
    assert spec.min_slice_size == (26, 24)
    # a registered task's folder given to the generic bundle is that task
    assert ob.resolve_task("msd", make_msd_task(tmp_path / "h", "heart", n_train=1, n_test=0)) is get_task("heart")
    # no dataset, no trained model: the placeholder, with a warning that says what to pass
    with caplog.at_level("WARNING"):
        assert ob.resolve_task("msd", tmp_path / "nowhere") is GENERIC_MSD
    assert "--dataset_dir" in caplog.text
    # a trained model's record wins over the task name and the dataset
    net = build_network("onenet_ed4", 2, 3, features=4)
    write_task_record(tmp_path / "models" / "task.json", task_record(spec, net, spatial_size=32, batch_size=4))
    trained = read_task_record(tmp_path / "models" / "model.pt")
    resolved = ob.resolve_task("heart", tmp_path / "nowhere", trained=trained)
    assert resolved == spec.replace(network="onenet_ed4", spatial_size=32, batch_size=4)


def _split_lists(tmp_path, **kwargs):
    task_dir = make_msd_task(tmp_path, "heart", n_train=6, n_test=0, shape=(6, 6, 3))
    return task_dir, ob.prepare_datalists("heart", task_dir, check="none", **kwargs)


def test_training_saves_its_split_and_evaluation_reads_it(tmp_path):
    saved = tmp_path / "output" / "datalist.json"
    task_dir, trained = _split_lists(tmp_path, val_fraction=0.5, seed=3, save_split=saved)
    document = json.loads(saved.read_text())
    assert document["train"] == [i["case_id"] for i in trained["train"]] and len(document["validation"]) == 3
    assert (document["val_fraction"], document["seed"], document["task"]) == (0.5, 3, "heart")
    # evaluation (no save_split) with the defaults of evaluate.json (None): exactly the saved cases
    evaluated = ob.prepare_datalists("heart", task_dir, val_fraction=None, seed=None, check="none", split_file=saved)
    assert [i["case_id"] for i in evaluated["validation"]] == document["validation"]
    assert [i["case_id"] for i in ob.prepare_datalists("heart", task_dir, seed=0, check="none")["validation"]] != (
        document["validation"]
    )  # what recomputing with other settings would have scored
    # asking for other settings than the saved split's is an error that says so
    with pytest.raises(ValueError, match=r"asks for seed=0, .*trained on the split saved there \(seed=3\).*--seed"):
        ob.prepare_datalists("heart", task_dir, val_fraction=None, seed=0, check="none", split_file=saved)
    with pytest.raises(ValueError, match=r"val_fraction=0\.2.*val_fraction=0\.5"):
        ob.prepare_datalists("heart", task_dir, val_fraction=0.2, seed=3, check="none", split_file=saved)


def test_fixed_split_file_for_training(tmp_path, caplog):
    task_dir = make_msd_task(tmp_path, "heart", n_train=4, n_test=1, shape=(6, 6, 3))
    fixed = tmp_path / "my_split.json"
    fixed.write_text(json.dumps({"train": ["case_002", "case_000"], "validation": ["case_003"]}))
    saved = tmp_path / "output" / "datalist.json"
    lists = ob.prepare_datalists("heart", task_dir, check="none", split_file=fixed, save_split=saved)
    assert [i["case_id"] for i in lists["train"]] == ["case_002", "case_000"] and len(lists["test"]) == 1
    document = json.loads(saved.read_text())
    assert document["source"] == str(fixed) and document["seed"] is None  # a given split: seed and fraction unused
    fixed.write_text(json.dumps({"train": ["case_009"], "validation": ["case_003"]}))
    with pytest.raises(ValueError, match=r"my_split.json: 1 case id\(s\) not in the dataset: \['case_009'\]"):
        ob.prepare_datalists("heart", task_dir, check="none", split_file=fixed)
    with pytest.raises(FileNotFoundError, match="missing.json"):  # training with a split that is not there
        ob.prepare_datalists("heart", task_dir, check="none", split_file=tmp_path / "missing.json", save_split=saved)
    with caplog.at_level("WARNING"):  # evaluating a model trained before splits were saved: the old way, said
        missing = tmp_path / "missing.json"
        lists = ob.prepare_datalists("heart", task_dir, val_fraction=None, seed=None, check="none", split_file=missing)
    assert "no saved split" in caplog.text and len(lists["validation"]) == 1


def test_generic_task_errors_say_where_channels_come_from(tmp_path):
    task_dir = make_msd_task(tmp_path, CUSTOM_TASK, n_train=2, n_test=0, shape=(6, 6, 3))
    meta = json.loads((task_dir / "dataset.json").read_text())
    meta["modality"] = {"0": "T1"}  # images have 2 channels
    (task_dir / "dataset.json").write_text(json.dumps(meta))
    spec = ob.resolve_task("msd", task_dir)
    with pytest.raises(DataValidationError) as error:
        ob.prepare_datalists(spec, task_dir, check="header")
    text = str(error.value)
    assert f"{task_dir / 'dataset.json'}: 'modality' lists 1 channel(s)" in text
    assert "case_000.nii.gz: 2 channel(s), task Task99_Custom expects 1" in text


@pytest.mark.parametrize("task,ext,ok", [("heart", ".nii", True), ("heart", ".png", False), ("voc", ".nii.gz", False)])
def test_inference_output_extension_is_checked(task, ext, ok):
    from monai.transforms import Compose

    if ok:
        assert ob.inference_postprocessing(task, Compose([]), "out", output_ext=ext).transforms[-1].saver
    else:
        with pytest.raises(ValueError, match=f"output_ext '{re.escape(ext)}': task {task} writes"):
            ob.inference_postprocessing(task, Compose([]), "out", output_ext=ext)

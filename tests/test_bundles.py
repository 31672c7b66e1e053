"""The five bundles end to end on tiny synthetic data: properties, train, evaluate, inference, resume, DDP, verbs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from onenet_med.data import DataValidationError, get_task
from tests.conftest import REPO_ROOT
from tests.data_trees import make_msd_task, make_pets_tree, make_voc_tree, save_nifti

BUNDLES_DIR = Path(REPO_ROOT) / "bundles"
BUNDLES = ["onenet_heart", "onenet_brain", "onenet_lung", "onenet_voc", "onenet_pets", "onenet_demo"]
CONFIG_FILES = {
    "train": ["train.json"],
    "eval": ["train.json", "evaluate.json"],
    "infer": ["train.json", "inference.json"],
}
# tiny everything: 4-wide networks, 32x32 slices, one epoch, no workers
TINY = {
    "network_def#features": 4,
    "spatial_size": 32,
    "batch_size": 4,
    "num_workers": 0,
    "max_epochs": 1,
    "val_interval": 1,
    "progress": False,
    "bn_refresh_batches": 2,
}


def make_dataset(bundle: str, root: Path, task: str | None = None) -> Path:
    """A tiny dataset tree for ``bundle``; returns the folder its ``dataset_dir`` points at."""
    task = task or bundle.removeprefix("onenet_")
    kind = get_task(task).kind
    if kind == "voc":
        return make_voc_tree(root)
    if kind == "pets":
        return make_pets_tree(root)
    return make_msd_task(root, task, n_train=4, n_test=1)


def workflow(bundle: str, kind: str, tmp: Path, dataset_dir: Path, **overrides) -> ConfigWorkflow:
    configs = [str(BUNDLES_DIR / bundle / "configs" / name) for name in CONFIG_FILES[kind]]
    settings = {**TINY, "dataset_dir": str(dataset_dir), "bundle_root": str(tmp / "bundle"), **overrides}
    return ConfigWorkflow(config_file=configs, logging_file=False, workflow_type=kind, **settings)


def run(wf: ConfigWorkflow) -> None:
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_layout_and_metadata(bundle):
    root = BUNDLES_DIR / bundle
    for rel in ["configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt",
                "LICENSE"]:  # fmt: skip
        assert (root / rel).is_file(), f"{bundle} lacks {rel}"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    spec = get_task(bundle.removeprefix("onenet_"))
    assert meta["name"] == bundle
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == spec.in_channels == len(image["channel_def"])
    assert pred["num_channels"] == spec.num_classes
    assert [pred["channel_def"][str(i)] for i in range(spec.num_classes)] == list(spec.class_names)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_offline(bundle):
    from monai.bundle import verify_metadata

    schema = BUNDLES_DIR / "common" / "metadata_schema.json"
    verify_metadata(meta_file=str(BUNDLES_DIR / bundle / "configs" / "metadata.json"), filepath=str(schema))


def test_vendored_schema_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.loads((BUNDLES_DIR / "onenet_heart" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="channel_def"):
        verify_metadata(meta_file=str(bad), filepath=str(BUNDLES_DIR / "common" / "metadata_schema.json"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_evaluate_infer(bundle, tmp_path):
    """Train one epoch, evaluate the best checkpoint, predict the test items: every property present."""
    dataset_dir = make_dataset(bundle, tmp_path / "data")
    spec = get_task(bundle.removeprefix("onenet_"))
    # VOC publishes no test list: predict given files, as a user would
    inputs = [str(dataset_dir / "JPEGImages")] if spec.kind == "voc" else None  # a folder of JPEGs
    for kind in ("train", "eval", "infer"):
        wf = workflow(bundle, kind, tmp_path, dataset_dir, **({"input_files": inputs} if kind == "infer" else {}))
        wf.initialize()
        assert wf.check_properties() == [], kind

    run(workflow(bundle, "train", tmp_path, dataset_dir))
    models = tmp_path / "bundle" / "models"
    assert (models / "model.pt").is_file() and (models / "latest.pt").is_file()
    latest = torch.load(models / "latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == latest["trainer"]["epoch_length"] and {
        "model",
        "optimizer",
        "lr_scheduler",
        "rng",
    } <= set(latest)

    run(workflow(bundle, "eval", tmp_path, dataset_dir))
    eval_dir = tmp_path / "bundle" / "output"  # output_dir/metrics.json
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    for key in ("ce", "dice", "miou", "map50"):
        assert isinstance(metrics[key], float), key
    assert metrics["ce"] > 0 and 0 <= metrics["dice"] <= 1 and 0 <= metrics["map50"] <= 1
    assert set(metrics["per_class"]) == set(spec.class_names[1:])
    rows = (eval_dir / "per_case.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == metrics["num_cases"] > 0
    assert "| Method |" in (eval_dir / "metrics.md").read_text()
    if spec.is_volume:
        assert isinstance(metrics["volume_dice"], float)

    run(workflow(bundle, "infer", tmp_path, dataset_dir, input_files=inputs))
    outputs = sorted((tmp_path / "bundle" / "output" / "predictions").iterdir())
    assert outputs and not [p for p in outputs if p.name.startswith(".")]  # no temporary leftovers
    if spec.is_volume:
        source = nib.load(next((dataset_dir / "imagesTs").iterdir()))
        out = nib.load(outputs[0])
        assert out.shape == source.shape[:3]
        np.testing.assert_array_equal(out.affine, source.affine)
        labels = np.asarray(out.dataobj)
        assert out.get_data_dtype() == np.uint8 and labels.max() < spec.num_classes
    else:
        out = np.asarray(Image.open(outputs[0]))
        assert out.dtype == np.uint8 and out.max() < spec.num_classes


def test_pets_breed_override(tmp_path):
    """One override turns the trimap bundle into the 38-class breed bundle."""
    dataset_dir = make_dataset("onenet_pets", tmp_path / "data", task="petf")
    wf = workflow("onenet_pets", "train", tmp_path, dataset_dir, task="petf")
    wf.initialize()
    assert wf.parser.get_parsed_content("network_def")(torch.zeros(1, 3, 32, 32)).shape[1] == 38
    wf.run()
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()


def test_resume_equals_uninterrupted(tmp_path):
    """1 epoch + resume 1 epoch gives the weights of 2 uninterrupted epochs."""
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    run(workflow("onenet_heart", "train", tmp_path / "full", dataset_dir, max_epochs=2))
    run(workflow("onenet_heart", "train", tmp_path / "split", dataset_dir, max_epochs=1))
    run(workflow("onenet_heart", "train", tmp_path / "split", dataset_dir, max_epochs=2, resume=True))
    full = torch.load(tmp_path / "full" / "bundle" / "models" / "latest.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "bundle" / "models" / "latest.pt", weights_only=True)
    assert full["trainer"]["iteration"] == split["trainer"]["iteration"] == 2 * full["trainer"]["epoch_length"]
    for name, tensor in full["model"].items():
        torch.testing.assert_close(split["model"][name], tensor, atol=1e-6, rtol=0, msg=name)


def test_bad_data_fails_before_training(tmp_path):
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    bad_label = dataset_dir / "labelsTr" / "case_001.nii.gz"
    save_nifti(bad_label, np.zeros((7, 7, 7), np.uint8))
    wf = workflow("onenet_heart", "train", tmp_path, dataset_dir)
    wf.initialize()
    with pytest.raises(RuntimeError) as error:  # monai.bundle wraps it; the cause is ours, naming the file
        wf.run()
    assert isinstance(error.value.__cause__, DataValidationError)
    assert "case_001.nii.gz: label shape (7, 7, 7) != image shape" in str(error.value.__cause__)
    assert not (tmp_path / "bundle" / "models").exists()


def test_missing_dataset_dir_is_explained(tmp_path):
    wf = workflow("onenet_heart", "train", tmp_path, tmp_path / "nowhere")
    wf.initialize()
    with pytest.raises(RuntimeError) as error:
        wf.run()
    assert isinstance(error.value.__cause__, FileNotFoundError)
    assert "nowhere" in str(error.value.__cause__) and "--dataset_dir" in str(error.value.__cause__)


PROGRESS_BAR = re.compile(r"\[\d+/\d+\]\s+\d+%\|")  # Ignite's tqdm bar: "Epoch [2/2]: [2/3]  67%|###"


def bundle_run(args: list[str], settings: dict, env: dict) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` as a user types it: every value a string on the command line."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    for key, value in settings.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_monai_bundle_run_subprocess_resume_switch(tmp_path, subprocess_env):
    """The README's main entry with switches spelled as in JSON: ``--resume false`` on a fresh folder trains from
    scratch (python-fire hands over the string "false"), ``--resume true`` continues from latest.pt."""
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    settings = {**TINY, "dataset_dir": dataset_dir, "bundle_root": tmp_path / "bundle"}
    config = ["--config_file", "bundles/onenet_heart/configs/train.json"]
    done = bundle_run(config, {**settings, "resume": "false", "progress": "false"}, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    latest = torch.load(tmp_path / "bundle" / "models" / "latest.pt", weights_only=True)
    epoch_length = latest["trainer"]["epoch_length"]
    assert latest["trainer"]["iteration"] == epoch_length  # one epoch, from scratch
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()
    assert not PROGRESS_BAR.search(done.stderr)  # --progress false: no bar

    done = bundle_run(config, {**settings, "resume": "true", "progress": "true", "max_epochs": 2}, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {tmp_path / 'bundle' / 'models' / 'latest.pt'} at epoch 1" in done.stdout + done.stderr
    assert PROGRESS_BAR.search(done.stderr)  # --progress true: the bar
    latest = torch.load(tmp_path / "bundle" / "models" / "latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 2 * epoch_length


@pytest.mark.parametrize("value, on", [("true", True), ("false", False), ("True", True), ("0", False), (1, True)])
def test_switches_reach_the_components(tmp_path, value, on):
    """The instantiated trainer, loader and handlers get real booleans from every spelling."""
    from ignite.handlers import ProgressBar

    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    wf = workflow("onenet_heart", "train", tmp_path, dataset_dir, amp=value, drop_last=value, progress=value)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.amp is on and wf.parser.get_parsed_content("validate#evaluator").amp is on
    assert trainer.data_loader.drop_last is on
    bar = next(h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, ProgressBar))
    assert bar.tqdm_kwargs["disable"] is (not on)


def test_export_verbs(tmp_path):
    """verify_net_in_out, ckpt_export (TorchScript) and onnx_export on a trained tiny heart bundle."""
    from monai.bundle import ckpt_export, onnx_export, verify_net_in_out

    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    run(workflow("onenet_heart", "train", tmp_path, dataset_dir))
    configs = BUNDLES_DIR / "onenet_heart" / "configs"
    common = {
        "meta_file": str(configs / "metadata.json"),
        "config_file": str(configs / "train.json"),
        "network_def#features": 4,
    }
    verify_net_in_out(net_id="network_def", any=48, device="cpu", **common)
    models = tmp_path / "bundle" / "models"
    ckpt_export(net_id="network_def", filepath=str(models / "model.ts"), ckpt_file=str(models / "model.pt"), **common)
    onnx_export(
        net_id="network_def",
        filepath=str(models / "model.onnx"),
        ckpt_file=str(models / "model.pt"),
        input_shape=[1, 1, 64, 64],
        converter_kwargs={
            "input_names": ["image"],
            "output_names": ["pred"],
            "dynamic_axes": {
                "image": {0: "batch", 2: "height", 3: "width"},
                "pred": {0: "batch", 2: "height", 3: "width"},
            },
        },
        **common,
    )
    net = get_network_from_checkpoint(models / "model.pt")
    x = torch.randn(2, 1, 48, 80)
    with torch.no_grad():
        expected = net(x)
    scripted = torch.jit.load(str(models / "model.ts"))
    torch.testing.assert_close(scripted(x), expected, atol=1e-5, rtol=1e-5)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=5e-4, rtol=1e-4)  # float32 reassociation


def get_network_from_checkpoint(path: Path) -> torch.nn.Module:
    from onenet_med.networks import get_network

    net = get_network("onenet_ed4", 1, 2, features=4)
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


@pytest.mark.slow
def test_multi_gpu_train_with_two_cpu_processes(tmp_path, subprocess_env):
    """multi_gpu_train.json under torchrun with 2 CPU (gloo) processes; checkpoints by rank 0 only."""
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    configs = BUNDLES_DIR / "onenet_heart" / "configs"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    args += [
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
    ]
    settings = {
        **TINY,
        "max_epochs": 2,
        "val_fraction": 0.5,
        "dataset_dir": dataset_dir,
        "bundle_root": tmp_path / "bundle",
    }
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    done = subprocess.run(args, cwd=REPO_ROOT, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    latest = torch.load(tmp_path / "bundle" / "models" / "latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 2 * latest["trainer"]["epoch_length"]
    assert not any(k.startswith("module.") for k in latest["model"])  # saved unwrapped: loads without DDP
    assert set(os.listdir(tmp_path / "bundle" / "models")) == {"latest.pt", "model.pt"}

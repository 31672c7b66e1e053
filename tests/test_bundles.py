"""Every bundle end to end on tiny synthetic data: properties, train, evaluate, inference alone, the generic MSD
bundle, saved splits, resume, DDP, verbs, and a zip of each bundle run from outside the checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from PIL import Image

from onenet_med.data import DataValidationError, TaskSpec, get_task
from onenet_med.data.msd import case_id_from_path
from tests.conftest import REPO_ROOT
from tests.data_trees import CUSTOM_TASK, make_msd_task, make_pets_tree, make_voc_tree, save_nifti

BUNDLES_DIR = Path(REPO_ROOT) / "bundles"
BUNDLES = ["onenet_heart", "onenet_brain", "onenet_lung", "onenet_voc", "onenet_pets", "onenet_demo", "onenet_msd"]
CONFIG_FILES = {
    "train": ["train.json"],
    "eval": ["train.json", "evaluate.json"],
    "infer": ["inference.json"],  # runs alone, model-zoo style
    "train+infer": ["train.json", "inference.json"],
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


def bundle_spec(bundle: str) -> TaskSpec:
    """The task a bundle's tiny dataset describes (the generic bundle: a task no registered one describes)."""
    return CUSTOM_TASK if bundle == "onenet_msd" else get_task(bundle.removeprefix("onenet_"))


def make_dataset(bundle: str, root: Path, task: str | TaskSpec | None = None) -> Path:
    """A tiny dataset tree for ``bundle``; returns the folder its ``dataset_dir`` points at."""
    spec = get_task(task) if task is not None else bundle_spec(bundle)
    if spec.kind == "voc":
        return make_voc_tree(root)
    if spec.kind == "pets":
        return make_pets_tree(root)
    return make_msd_task(root, spec, n_train=4, n_test=1)


def root_cause(error: BaseException) -> BaseException:
    """The error a config expression raised, under monai.bundle's RuntimeError wrappers."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def workflow(bundle: str, kind: str, tmp: Path, dataset_dir: Path, tiny: bool = True, **overrides) -> ConfigWorkflow:
    """A bundle's configs as a ConfigWorkflow with its outputs in ``tmp/bundle``. ``tiny``: the TINY training
    settings; without them (evaluation, inference) the task saved with the model defines network and sizes."""
    configs = [str(BUNDLES_DIR / bundle / "configs" / name) for name in CONFIG_FILES[kind]]
    settings = {**(TINY if tiny else {"num_workers": 0}), "dataset_dir": str(dataset_dir)}
    settings.update(bundle_root=str(tmp / "bundle"), **overrides)
    return ConfigWorkflow(config_file=configs, logging_file=False, workflow_type=kind.split("+")[-1], **settings)


def run(wf: ConfigWorkflow) -> None:
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_layout_and_metadata(bundle):
    root = BUNDLES_DIR / bundle
    for rel in ["configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "configs/multi_gpu_train.json", "configs/multi_gpu_evaluate.json", "configs/logging.conf",
                "docs/README.md", "docs/data_license.txt", "LICENSE"]:  # fmt: skip
        assert (root / rel).is_file() and not (root / rel).is_symlink(), f"{bundle} lacks {rel}"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    spec = get_task(bundle.removeprefix("onenet_"))  # onenet_msd: the generic placeholder until trained
    assert meta["name"] == bundle
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == spec.in_channels == len(image["channel_def"])
    assert pred["num_channels"] == spec.num_classes
    assert [pred["channel_def"][str(i)] for i in range(spec.num_classes)] == list(spec.class_names)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_docs_links_stay_inside_the_bundle(bundle):
    """A bundle's docs travel without the repository: every relative link resolves inside the bundle folder."""
    root = (BUNDLES_DIR / bundle).resolve()
    for doc in (root / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(root) and path.exists(), f"{doc}: link {target}"


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
def test_inference_json_alone_has_every_property(bundle):
    """Model-zoo CI's check: inference.json alone, no overrides, no data, no model."""
    wf = ConfigWorkflow(config_file=str(BUNDLES_DIR / bundle / "configs" / "inference.json"), workflow_type="inference")
    wf.initialize()
    assert wf.check_properties() == []
    assert wf.bundle_root == str(BUNDLES_DIR / bundle)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_evaluate_infer(bundle, tmp_path):
    """Train one epoch, evaluate the best checkpoint, predict the test items with inference.json alone: every
    property present; evaluation and inference need no training settings (the task is saved with the model)."""
    dataset_dir = make_dataset(bundle, tmp_path / "data")
    spec = bundle_spec(bundle)
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
    record = json.loads((models / "task.json").read_text())
    assert record["task"]["class_names"] == list(spec.class_names) and record["task"]["spatial_size"] == 32
    assert record["network"]["kwargs"] == {"features": 4}
    split = json.loads((tmp_path / "bundle" / "output" / "datalist.json").read_text())

    run(workflow(bundle, "eval", tmp_path, dataset_dir, tiny=False))
    eval_dir = tmp_path / "bundle" / "output"  # output_dir/metrics.json
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    for key in ("ce", "dice", "miou", "map50"):
        assert isinstance(metrics[key], float), key
    assert metrics["ce"] > 0 and 0 <= metrics["dice"] <= 1 and 0 <= metrics["map50"] <= 1
    assert set(metrics["per_class"]) == set(spec.class_names[1:])
    rows = (eval_dir / "per_case.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == metrics["num_cases"] > 0
    assert sorted(case_id_from_path(r.split(",")[0]) for r in rows[1:]) == sorted(split["validation"])
    assert "| Method |" in (eval_dir / "metrics.md").read_text()
    if spec.is_volume:
        assert isinstance(metrics["volume_dice"], float)

    run(workflow(bundle, "infer", tmp_path, dataset_dir, tiny=False, input_files=inputs))
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


def test_inference_and_evaluation_run_the_inference_copy(tmp_path):
    """inference.json and evaluate.json load the checkpoint into the plain network, then run its inference copy
    (optimize true, the default) or the network itself (optimize false), with the same results."""
    from onenet_med.networks.optimize import FastConv2d

    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    run(workflow("onenet_heart", "train", tmp_path, dataset_dir))
    outputs = {}
    for optimize in (True, False):
        out = tmp_path / f"out_{optimize}"
        for kind in ("eval", "infer"):
            wf = workflow("onenet_heart", kind, tmp_path, dataset_dir, optimize=optimize, output_dir=str(out))
            run(wf)
            evaluator = wf.parser.get_parsed_content("evaluator")
            plain = wf.parser.get_parsed_content("network")
            fast = [m for m in evaluator.network.modules() if isinstance(m, FastConv2d)]
            assert (evaluator.network is not plain and len(fast) > 0) == optimize, kind
        outputs[optimize] = (json.loads((out / "metrics.json").read_text()), sorted((out / "predictions").iterdir()))
    (metrics, predictions), (plain_metrics, plain_predictions) = outputs[True], outputs[False]
    assert metrics["dice"] == pytest.approx(plain_metrics["dice"], abs=1e-6)
    assert [p.name for p in predictions] == [p.name for p in plain_predictions]
    for a, b in zip(predictions, plain_predictions):
        np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))


def test_training_with_channels_last(tmp_path):
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    wf = workflow("onenet_heart", "train", tmp_path, dataset_dir, network_name="unet4", channels_last=True)
    run(wf)
    network = wf.parser.get_parsed_content("train#trainer").network
    weights = [p for p in network.parameters() if p.dim() == 4 and p.shape[-1] == 3 and p.shape[1] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()


def test_train_plus_inference_and_output_options(tmp_path):
    """train.json + inference.json still runs; output name, folder layout and dtype come from the command line;
    load_pretrain false predicts with fresh weights and needs no checkpoint."""
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    options = {"output_postfix": "mask", "output_ext": ".nii", "output_dtype": "int16", "separate_folder": True}
    run(workflow("onenet_heart", "train+infer", tmp_path, dataset_dir, load_pretrain=False, **options))
    assert not (tmp_path / "bundle" / "models").exists()
    out = nib.load(tmp_path / "bundle" / "output" / "predictions" / "case_004" / "case_004_mask.nii")
    assert out.get_data_dtype() == np.int16 and out.shape == (20, 24, 12)


def test_generic_bundle_on_a_task_of_ones_own(tmp_path, capsys):
    """onenet_msd on a tiny MSD-layout task that no registered task describes (2 modalities, 3 named labels):
    train, evaluate, then predict a volume with the CLI from the checkpoint alone."""
    from onenet_med.cli import main

    dataset_dir = make_dataset("onenet_msd", tmp_path / "data")
    run(workflow("onenet_msd", "train", tmp_path, dataset_dir))
    run(workflow("onenet_msd", "eval", tmp_path, dataset_dir, tiny=False))
    metrics = json.loads((tmp_path / "bundle" / "output" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["core", "rim"] and metrics["task"] == "Task99_Custom"
    checkpoint = tmp_path / "bundle" / "models" / "model.pt"
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(dataset_dir / "imagesTs" / "case_004.nii.gz", scans / "new_patient.nii.gz")
    argv = ["predict", "--bundle", str(BUNDLES_DIR / "onenet_msd"), "--checkpoint", str(checkpoint), str(scans)]
    assert main([*argv, "--output", str(tmp_path / "pred"), "--no-progress", "--device", "cpu"]) == 0
    assert "core mL" in capsys.readouterr().out  # the dataset's class names
    seg = nib.load(tmp_path / "pred" / "new_patient_seg.nii.gz")
    assert seg.shape == (20, 24, 12) and np.asarray(seg.dataobj).max() < 3
    report = json.loads((tmp_path / "pred" / "new_patient_seg.json").read_text())
    assert set(report["volume_ml"]) == {"background", "core", "rim"}


def _edit_dataset_json(task_dir: Path, **changes) -> Path:
    meta = json.loads((task_dir / "dataset.json").read_text())
    meta.update(changes)
    (task_dir / "dataset.json").write_text(json.dumps(meta))
    return task_dir / "dataset.json"


@pytest.mark.parametrize(
    "problem,changes,named,message",
    [
        ("labels keys not 0..N-1", {"labels": {"0": "background", "1": "core", "3": "rim"}}, "dataset.json",
         r"'labels' keys must be 0\.\.2"),
        ("fewer modalities than image channels", {"modality": {"0": "T1"}}, "case_000.nii.gz",
         r"2 channel\(s\), task Task99_Custom expects 1"),
        ("labels beyond the classes", {"labels": {"0": "background", "1": "core"}}, "labelsTr/case_000.nii.gz",
         r"label values \[2\] outside the task's classes 0\.\.1"),
    ],
)  # fmt: skip
def test_bad_dataset_json_fails_before_training(tmp_path, problem, changes, named, message):
    dataset_dir = make_dataset("onenet_msd", tmp_path / "data")
    json_path = _edit_dataset_json(dataset_dir, **changes)
    wf = workflow("onenet_msd", "train", tmp_path, dataset_dir)
    wf.initialize()
    with pytest.raises(RuntimeError) as error:
        wf.run()
    cause = root_cause(error.value)
    assert isinstance(cause, ValueError), problem  # DataValidationError is a ValueError
    assert re.search(message, str(cause)) and named in str(cause), str(cause)
    assert str(json_path) in str(cause)  # the file the task came from
    assert not (tmp_path / "bundle" / "models").exists()


def test_evaluation_refuses_another_split(tmp_path):
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    run(workflow("onenet_heart", "train", tmp_path, dataset_dir, seed=1, val_fraction=0.5))
    wf = workflow("onenet_heart", "eval", tmp_path, dataset_dir, tiny=False, seed=0)
    wf.initialize()
    with pytest.raises(RuntimeError) as error:
        wf.run()
    assert "datalist.json: this run asks for seed=0" in str(root_cause(error.value))
    run(workflow("onenet_heart", "eval", tmp_path, dataset_dir, tiny=False, seed=1))  # the same: fine
    assert json.loads((tmp_path / "bundle" / "output" / "metrics.json").read_text())["num_cases"] == 2


def test_pets_breed_override(tmp_path):
    """One override turns the trimap bundle into the 38-class breed bundle."""
    dataset_dir = make_dataset("onenet_pets", tmp_path / "data", task="petf")
    wf = workflow("onenet_pets", "train", tmp_path, dataset_dir, task="petf")
    wf.initialize()
    assert wf.parser.get_parsed_content("network_def")(torch.zeros(1, 3, 32, 32)).shape[1] == 38
    wf.run()
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()


@pytest.mark.parametrize("bundle", ["onenet_heart", "onenet_pets"])
def test_context_network_by_name(bundle, tmp_path):
    """``--network_name onenet_ed4_ctx`` trains, evaluates and infers in a bundle (its block in the checkpoint)."""
    dataset_dir = make_dataset(bundle, tmp_path / "data")
    run(workflow(bundle, "train", tmp_path, dataset_dir, network_name="onenet_ed4_ctx"))
    weights = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert {"context.taps_h", "context.taps_w", "context.offset"} <= set(weights)
    run(workflow(bundle, "eval", tmp_path, dataset_dir, network_name="onenet_ed4_ctx"))
    assert 0 <= json.loads((tmp_path / "bundle" / "output" / "metrics.json").read_text())["dice"] <= 1


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


@pytest.mark.slow  # the fast suite runs bundles in a subprocess in test_exported_bundle_runs_outside_the_checkout
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


def torchrun(configs: list[str], settings: dict, logs: Path, env: dict[str, str]) -> dict[int, str]:
    """``torchrun`` with 2 CPU (gloo) processes over a bundle's configs; returns each rank's stdout (its log)."""
    files = [str(BUNDLES_DIR / "onenet_heart" / "configs" / c) for c in configs]
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    args += ["--log-dir", str(logs), "--redirects", "3", "-m", "monai.bundle", "run", "--config_file", str(files)]
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    stdout = {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_0/*/stdout.log")}
    stderr = "".join(p.read_text()[-3000:] for p in logs.glob("*/attempt_0/*/stderr.log"))
    assert done.returncode == 0, done.stderr[-2000:] + stderr
    return stdout


def info_lines(log: str) -> list[str]:
    # MONAI logs which logging.conf it applies when the workflow is created, before the process group exists
    return [line for line in log.splitlines() if " INFO - " in line and "Setting logging properties" not in line]


@pytest.mark.slow
def test_multi_gpu_train_and_evaluate_with_two_cpu_processes(tmp_path, subprocess_env):
    """multi_gpu_train.json and multi_gpu_evaluate.json under torchrun with 2 CPU (gloo) processes: rank 0 alone logs
    at INFO, writes TensorBoard events, checkpoints and reports; the distributed evaluation scores every held-out case
    once, with the numbers of a single process."""
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    bundle = tmp_path / "bundle"
    settings = {**TINY, "max_epochs": 2, "val_fraction": 0.5, "dataset_dir": dataset_dir, "bundle_root": bundle}
    logs = torchrun(["train.json", "multi_gpu_train.json"], settings, tmp_path / "train_logs", subprocess_env)
    assert info_lines(logs[1]) == []  # rank 1: silent at INFO
    assert logs[0].count("Metrics -- ") == 2 and "Got new best metric" in logs[0]  # one line per validation
    latest = torch.load(bundle / "models" / "latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 2 * latest["trainer"]["epoch_length"]
    assert not any(k.startswith("module.") for k in latest["model"])  # saved unwrapped: loads without DDP
    assert set(os.listdir(bundle / "models")) == {"latest.pt", "model.pt", "task.json"}
    events = [p.name for p in (bundle / "output").glob("events.out.tfevents.*")]
    assert events and len({name.split(".")[-2] for name in events}) == 1  # one writing process (pid in the name)

    evaluate = {"dataset_dir": dataset_dir, "bundle_root": bundle, "num_workers": 0}
    logs = torchrun(["train.json", "evaluate.json", "multi_gpu_evaluate.json"], evaluate, tmp_path / "eval_logs",
                    subprocess_env)  # fmt: skip
    assert info_lines(logs[1]) == [] and "Metrics -- " in logs[0]
    distributed = json.loads((bundle / "output" / "metrics.json").read_text())
    single = tmp_path / "single"
    split = str(bundle / "output" / "datalist.json")
    run(workflow("onenet_heart", "eval", tmp_path, dataset_dir, tiny=False, output_dir=str(single), split_file=split))
    expected = json.loads((single / "metrics.json").read_text())
    assert distributed["num_cases"] == expected["num_cases"] == 2
    for key in ("ce", "dice", "miou", "map50", "volume_dice"):
        assert distributed[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    rows = sorted((bundle / "output" / "per_case.csv").read_text().splitlines()[1:])
    assert [r.split(",")[0] for r in rows] == sorted(
        r.split(",")[0] for r in (single / "per_case.csv").read_text().splitlines()[1:]
    )


# ------------------------------------------------------------------------------------ bundles outside the checkout

# One process runs the steps one after the other, each exactly as `python -m monai.bundle run` does (fire parses
# the command line into these arguments): one interpreter start instead of three per bundle.
RUN_STEPS = "import json, sys; from monai.bundle import run; [run(**step) for step in json.load(open(sys.argv[1]))]"


def checkout_state() -> tuple[str, str]:
    """``git status`` of the checkout, and every git-ignored file in it (outputs hide there: bundles/*/models/ is
    ignored), leaving out caches that running Python and the tests create."""
    git = ["git", "-C", REPO_ROOT]
    status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True)
    caches = [":(exclude).venv", ":(exclude,glob)**/__pycache__/**", ":(exclude).pytest_cache", ":(exclude).ruff_cache"]
    ignored = subprocess.run([*git, "ls-files", "--others", "--ignored", "--exclude-standard", "--", ".", *caches],
                             capture_output=True, text=True)  # fmt: skip
    assert status.returncode == 0 and ignored.returncode == 0, status.stderr + ignored.stderr
    return status.stdout, ignored.stdout


def exported_roundtrip(bundles: list[str], tmp_path: Path, env: dict[str, str]) -> None:
    """Zip each bundle with `onenet-med bundle export`, extract it with MONAI's extractall into a folder outside the
    checkout, and from a third working directory train (1 tiny epoch), evaluate and predict with inference.json
    alone: every output in the extracted folder, nothing in the checkout or the working directory."""
    from monai.apps import extractall

    from onenet_med.cli import main

    before = checkout_state()
    extracted, workdir = tmp_path / "extracted", tmp_path / "elsewhere"
    workdir.mkdir()
    assert not extracted.resolve().is_relative_to(Path(REPO_ROOT).resolve())
    steps, expected = [], []
    for bundle in bundles:
        assert main(["bundle", "export", "--bundle", str(BUNDLES_DIR / bundle), "--out", str(tmp_path / "dist")]) == 0
        extractall(filepath=str(tmp_path / "dist" / f"{bundle}_v0.1.0.zip"), output_dir=str(extracted), has_base=True)
        root = extracted / bundle
        dataset_dir = make_dataset(bundle, tmp_path / "data" / bundle)
        configs = root / "configs"
        common = {"dataset_dir": str(dataset_dir), "num_workers": 0}  # no bundle_root: the extracted folder
        inputs = {"input_files": [str(dataset_dir / "JPEGImages")]} if bundle == "onenet_voc" else {}
        steps += [
            {"config_file": str(configs / "train.json"), **TINY, **common},
            {"config_file": [str(configs / "train.json"), str(configs / "evaluate.json")], **common},
            {"config_file": str(configs / "inference.json"), **common, **inputs},
        ]
        expected.append(root)
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    done = subprocess.run([sys.executable, "-c", RUN_STEPS, str(tmp_path / "steps.json")], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    for root in expected:
        for rel in ("models/model.pt", "models/latest.pt", "models/task.json", "output/datalist.json",
                    "output/metrics.json", "output/per_case.csv"):  # fmt: skip
            assert (root / rel).is_file(), f"{root.name}: {rel}"
        assert list((root / "output" / "predictions").iterdir()), root.name
    assert os.listdir(workdir) == []  # nothing written where the commands ran
    assert checkout_state() == before  # nothing written into the checkout, not even into git-ignored folders


def test_exported_bundle_runs_outside_the_checkout(tmp_path, subprocess_env):
    exported_roundtrip(["onenet_heart"], tmp_path, subprocess_env)


@pytest.mark.slow
def test_every_exported_bundle_runs_outside_the_checkout(tmp_path, subprocess_env):
    exported_roundtrip(BUNDLES, tmp_path, subprocess_env)


def test_nnunet_peer_by_name(tmp_path):
    """``--network_name plainconvunet --network_def#features 4``: nnU-Net's network trains and evaluates in a bundle
    like the registry's own networks (the width override reaches it)."""
    pytest.importorskip("dynamic_network_architectures")
    dataset_dir = make_dataset("onenet_heart", tmp_path / "data")
    nnunet = {"network_name": "plainconvunet", "network_def#features": 4}
    run(workflow("onenet_heart", "train", tmp_path, dataset_dir, **nnunet))
    weights = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert weights["net.encoder.stages.0.0.convs.0.conv.weight"].shape[0] == 4
    run(workflow("onenet_heart", "eval", tmp_path, dataset_dir, **nnunet))
    assert 0 <= json.loads((tmp_path / "bundle" / "output" / "metrics.json").read_text())["dice"] <= 1

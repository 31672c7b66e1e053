"""The onnxruntime backend: the same labels and probabilities as the torch backend through Predictor and
``onenet-med predict``, session settings, and clear errors (missing onnxruntime, mismatched models)."""

from __future__ import annotations

import builtins
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from onenet_med.cli import main
from onenet_med.data import get_task
from onenet_med.inference import Predictor, load_bundle_config
from onenet_med.inference.backends import (
    OnnxRuntimeNetwork,
    check_model_record,
    preprocessing_identity,
    read_torchscript_record,
)
from onenet_med.networks import get_network
from tests.inference_helpers import BUNDLES, TINY

HEART = BUNDLES / "onenet_heart"
pytest.importorskip("onnxruntime")


def _predictor(exported_heart, backend, **kwargs) -> Predictor:
    if backend == "torch" and "model" not in kwargs:
        kwargs["checkpoint"] = exported_heart["checkpoint"]
    return Predictor.from_bundle(HEART, overrides=TINY, device="cpu", backend=backend, batch_slices=3, **kwargs)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_gives_the_torch_backends_labels_and_probabilities(exported_heart, fmt):
    case = exported_heart["case"]
    expected = _predictor(exported_heart, "torch").predict_volume(case, probabilities=True)
    backend = "onnxruntime" if fmt == "onnx" else "torch"
    other = _predictor(exported_heart, backend, model=exported_heart[fmt])
    got = other.predict_volume(case, probabilities=True)
    assert 0.05 < expected.labels.mean() < 0.95  # both classes present: equal labels mean something
    np.testing.assert_array_equal(got.labels, expected.labels)
    # the torch backend and the ONNX export run two different exact rewrites of the trained network (the CPU fast
    # path, the portable form): each is compared with the network as trained, not with the other's rounding
    trained = _predictor(exported_heart, "torch", optimize=False).predict_volume(case, probabilities=True)
    np.testing.assert_allclose(got.probabilities, trained.probabilities, atol=1e-4)
    np.testing.assert_allclose(expected.probabilities, trained.probabilities, atol=1e-4)
    np.testing.assert_array_equal(got.affine, expected.affine)
    assert other.checkpoint == exported_heart[fmt] and other.backend == backend


def test_predictor_constructor_takes_an_onnx_file(exported_heart):
    parser = load_bundle_config(HEART, TINY)
    pre = parser.get_parsed_content("preprocessing")
    predictor = Predictor(exported_heart["onnx"], pre, get_task("heart"), backend="onnxruntime", batch_slices=4)
    assert isinstance(predictor.network, OnnxRuntimeNetwork) and predictor.device == torch.device("cpu")
    expected = _predictor(exported_heart, "torch").predict_volume(exported_heart["case"])
    np.testing.assert_array_equal(predictor.predict_volume(exported_heart["case"]).labels, expected.labels)
    with pytest.raises(TypeError, match="takes an ONNX file"):
        Predictor(exported_heart["network"], pre, get_task("heart"), backend="onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(exported_heart["network"], pre, get_task("heart"), backend="tensorrt")


def test_int8_model_predicts_most_voxels_like_fp32(exported_heart):
    volume = str(exported_heart["task"] / "imagesTr" / "case_000.nii.gz")  # the data the network was trained on
    fp32 = _predictor(exported_heart, "onnxruntime", model=exported_heart["onnx"]).predict_volume(volume)
    int8 = _predictor(exported_heart, "onnxruntime", model=exported_heart["onnx-int8"])
    labels = int8.predict_volume(volume).labels
    assert labels.shape == fp32.labels.shape and labels.dtype == np.uint8
    assert 0.05 < fp32.labels.mean() < 0.95
    assert (labels == fp32.labels).mean() >= 0.97


def test_predict_cli_onnxruntime_writes_the_torch_labels(exported_heart, tmp_path):
    case = exported_heart["case"]
    common = ["predict", "--bundle", str(HEART), "--override", "network_def#features=4", "--no-progress"]
    common += ["--batch-slices", "4", case]
    assert main(common + ["--checkpoint", exported_heart["checkpoint"], "--output", str(tmp_path / "torch")]) == 0
    argv = common + ["--backend", "onnxruntime", "--model", exported_heart["onnx"], "--output", str(tmp_path / "ort")]
    assert main(argv) == 0
    torch_labels = np.asarray(nib.load(tmp_path / "torch" / "case_seg.nii.gz").dataobj)
    ort_img = nib.load(tmp_path / "ort" / "case_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(ort_img.dataobj), torch_labels)
    np.testing.assert_array_equal(ort_img.affine, nib.load(case).affine)
    summary = json.loads((tmp_path / "ort" / "summary.json").read_text())
    assert summary["backend"] == "onnxruntime" and summary["checkpoint"] == exported_heart["onnx"]


@pytest.mark.parametrize("threads", [1, 2])
def test_session_uses_torchs_thread_count(exported_heart, threads):
    torch.set_num_threads(threads)
    network = OnnxRuntimeNetwork(exported_heart["onnx"])
    assert network.threads == threads
    assert network.session.get_session_options().intra_op_num_threads == threads


@pytest.mark.parametrize("spinning, entry", [(True, "1"), (False, "0")])
def test_session_spinning_switch(exported_heart, spinning, entry):
    """Benchmarks that interleave sessions turn ORT's spin-waiting off; the outputs do not change."""
    network = OnnxRuntimeNetwork(exported_heart["onnx"], spinning=spinning)
    assert network.spinning is spinning
    options = network.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    x = torch.randn(1, 1, 24, 32, generator=torch.Generator().manual_seed(0))
    reference = OnnxRuntimeNetwork(exported_heart["onnx"])(x)
    assert torch.equal(network(x), reference)


def test_missing_onnxruntime_is_a_clear_error(exported_heart, monkeypatch, capsys, tmp_path):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match=r"onnxruntime backend needs ONNX Runtime.*pip install 'onenet-med\[onnx\]'"):
        _predictor(exported_heart, "onnxruntime", model=exported_heart["onnx"])
    argv = ["predict", "--bundle", str(HEART), "--backend", "onnxruntime", "--model", exported_heart["onnx"]]
    assert main(argv + ["--output", str(tmp_path), exported_heart["case"]]) == 2
    assert "onenet-med[onnx]" in capsys.readouterr().err


def test_model_for_other_channels_is_refused_naming_the_file(exported_heart, tmp_path):
    """The heart model (1 channel) with the brain bundle (4 channels); and a 4-channel model without a record
    (plain torch.onnx.export) with the heart bundle: the graph's input says 4."""
    with pytest.raises(ValueError, match=r"model\.onnx: the model has 1 input channels, the bundle needs 4"):
        Predictor.from_bundle(BUNDLES / "onenet_brain", backend="onnxruntime", model=exported_heart["onnx"])
    foreign = str(tmp_path / "foreign.onnx")
    net = get_network("onenet_ed4", 4, 2, features=4).eval()
    torch.onnx.export(net, (torch.randn(1, 4, 32, 32),), foreign, input_names=["x"], output_names=["y"], dynamo=False)
    with pytest.raises(ValueError, match=r"foreign\.onnx: the model has 4 input channels, the bundle needs 1"):
        _predictor(exported_heart, "onnxruntime", model=foreign)


def test_model_for_other_preprocessing_is_refused(exported_heart):
    """Same channels and classes, but the bundle now resizes slices to 64x64: the recorded identity differs."""
    with pytest.raises(ValueError, match=r"model\.onnx: exported for other inputs.*spatial_size: model None, bundle"):
        Predictor.from_bundle(
            HEART, backend="onnxruntime", model=exported_heart["onnx"], overrides={**TINY, "spatial_size": 64}
        )
    with pytest.raises(ValueError, match=r"model\.ts: exported for other inputs.*spatial_size"):
        Predictor.from_bundle(HEART, model=exported_heart["torchscript"], overrides={**TINY, "spatial_size": 64})


@pytest.mark.parametrize(
    "change,field",
    [
        ({"task": "lung"}, "task"),
        ({"intensity_stats": [0.0, 1.0]}, "intensity_stats"),
        ({"divisible_k": [16, 16]}, "k"),
    ],
)
def test_check_model_record_names_every_difference(change, field):
    parser = load_bundle_config(HEART)
    identity = preprocessing_identity(
        parser.get_parsed_content("task_spec"), parser.get_parsed_content("preprocessing")
    )
    check_model_record("m.onnx", {"preprocessing": identity}, identity)  # equal: accepted
    check_model_record("m.onnx", None, identity)  # no record: accepted (channels are checked on the graph)
    with pytest.raises(ValueError, match=rf"m\.onnx: .*{field}"):
        check_model_record("m.onnx", {"preprocessing": {**identity, **change}}, identity)


def test_onnxruntime_backend_refuses_a_checkpoint_and_a_missing_model(exported_heart, tmp_path):
    with pytest.raises(ValueError, match="runs an exported model"):
        Predictor.from_bundle(HEART, backend="onnxruntime", checkpoint=exported_heart["checkpoint"])
    with pytest.raises(FileNotFoundError, match="missing.onnx does not exist"):
        Predictor.from_bundle(HEART, backend="onnxruntime", model=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="either checkpoint"):
        Predictor.from_bundle(HEART, checkpoint=exported_heart["checkpoint"], model=exported_heart["torchscript"])


def test_not_an_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"bad\.onnx: not a loadable ONNX model"):
        OnnxRuntimeNetwork(bad)


def test_torchscript_record_is_read_back(exported_heart):
    record = read_torchscript_record(exported_heart["torchscript"])
    assert record["format"] == "torchscript" and record["in_channels"] == 1
    assert read_torchscript_record(_plain_torchscript(exported_heart)) is None


def _plain_torchscript(exported_heart) -> str:
    path = str(exported_heart["out"].parent / "plain.ts")
    torch.jit.script(exported_heart["network"]).save(path)
    return path


def test_tta_on_onnxruntime_equals_tta_on_torch(exported_heart):
    case = exported_heart["case"]
    expected = _predictor(exported_heart, "torch").predict_volume(case, tta=True, probabilities=True)
    got = _predictor(exported_heart, "onnxruntime", model=exported_heart["onnx"]).predict_volume(
        case, tta=True, probabilities=True
    )
    assert got.augmentations == expected.augmentations == 4
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-4)
    np.testing.assert_allclose(got.uncertainty, expected.uncertainty, atol=1e-3)
    np.testing.assert_allclose(got.disagreement, expected.disagreement, atol=1e-3)

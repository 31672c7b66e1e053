"""``onenet-med export``: files and records, ONNX fp32 equal to PyTorch at any size, int8 QDQ calibrated on the
bundle's training slices, TorchScript, calibration data, errors (missing extra, TorchScript checkpoint)."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from onenet_med.cli import main
from onenet_med.data import get_datalists
from onenet_med.inference import load_bundle_config
from onenet_med.inference.backends import RECORD_KEY, OnnxRuntimeNetwork, preprocessing_identity
from onenet_med.inference.export import (
    EXPORT_FORMATS,
    SliceCalibrationReader,
    calibration_slices,
    export_bundle,
    quantize_int8,
)
from onenet_med.networks import optimize_for_inference
from tests.inference_helpers import BUNDLES, TINY, save_checkpoint

HEART = BUNDLES / "onenet_heart"
onnx = pytest.importorskip("onnx")


def _heart_parser(task_dir, **overrides):
    """The heart bundle's config on ``task_dir`` with its outputs (and saved split) beside it, not in the checkout."""
    root = str(Path(task_dir).parent / "bundle")
    return load_bundle_config(HEART, {**TINY, "dataset_dir": str(task_dir), "bundle_root": root, **overrides})


def _preprocessed_slices(parser, case):
    """(D, C, H, W) slices of one volume after the bundle's inference chain."""
    image = parser.get_parsed_content("preprocessing")({"image": case})["image"].as_tensor()
    return image.permute(3, 0, 1, 2).contiguous()


@pytest.mark.parametrize("fmt", list(EXPORT_FORMATS))
def test_export_writes_model_and_record(fmt, exported_heart):
    path = exported_heart[fmt]
    sidecar = json.loads(open(path + ".json").read())
    if fmt == "torchscript":
        files = {RECORD_KEY: ""}
        torch.jit.load(path, _extra_files=files)
        embedded = json.loads(files[RECORD_KEY])
    else:
        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        embedded = json.loads(props[RECORD_KEY])
    assert {k: v for k, v in sidecar.items() if k not in ("seconds", "bytes")} == embedded
    assert sidecar["bytes"] == os.path.getsize(path)
    assert embedded["format"] == fmt and embedded["file"] == os.path.basename(path)
    assert (embedded["input_name"], embedded["output_name"]) == ("image", "logits")
    assert (embedded["in_channels"], embedded["out_channels"]) == (1, 2)
    assert embedded["class_names"] == ["background", "left atrium"]
    assert embedded["overrides"] == {"network_def#features": 4} and embedded["network"] == "onenet_ed4"
    parser = _heart_parser(exported_heart["task"])
    spec = parser.get_parsed_content("task_spec")
    assert embedded["preprocessing"] == preprocessing_identity(spec, parser.get_parsed_content("preprocessing"))
    assert embedded["checkpoint"] == os.path.abspath(exported_heart["checkpoint"])
    hidden = [p for p in os.listdir(exported_heart["out"]) if p.startswith(".")]
    assert not hidden  # temporary files and folders renamed or removed


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (3, 1, 37, 45), (2, 1, 7, 130)])
def test_onnx_fp32_logits_equal_pytorch_at_any_size(exported_heart, shape):
    net = optimize_for_inference(exported_heart["network"])
    session = OnnxRuntimeNetwork(exported_heart["onnx"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
    got = session(x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))


def _training_slices(exported_heart):
    """Every slice of the tiny task's training volumes after the bundle's preprocessing (the int8 calibration
    distribution)."""
    parser = _heart_parser(exported_heart["task"])
    train = get_datalists("heart", exported_heart["task"])["train"]
    return torch.cat([_preprocessed_slices(parser, str(t["image"])) for t in train])


@pytest.mark.parametrize("optimized", [True, False])
def test_onnx_fp32_logits_within_1e4_of_pytorch_on_preprocessed_slices(exported_heart, optimized):
    """On the inputs the model is made for, ORT fp32 equals PyTorch within 1e-4: the exported (optimized) module
    and the plain trained network."""
    net = optimize_for_inference(exported_heart["network"]) if optimized else exported_heart["network"]
    x = _training_slices(exported_heart)
    with torch.no_grad():
        expected = net(x)
    assert float((OnnxRuntimeNetwork(exported_heart["onnx"])(x) - expected).abs().max()) <= 1e-4
    check = json.loads(open(exported_heart["out"] / "model.onnx.json").read())["check"]
    assert 0 < check["max_abs_diff_vs_torch"] <= 1e-5 * max(1.0, check["max_abs_logit"])


def _int8_conv_weights(path):
    """For every Conv of an ONNX model in graph order: whether its weight comes from a per-output-channel int8
    DequantizeLinear (else it is a float initializer)."""
    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    dequant = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    flags = []
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        weight = node.input[1]
        if weight in dequant:
            q = inits[dequant[weight].input[0]]
            scale = onnx.numpy_helper.to_array(inits[dequant[weight].input[1]])
            assert q.data_type == onnx.TensorProto.INT8
            assert scale.shape == (q.dims[0],)  # one scale per output channel
            flags.append(True)
        else:
            assert inits[weight].data_type == onnx.TensorProto.FLOAT
            flags.append(False)
    return flags


def test_int8_is_qdq_with_per_channel_int8_weights_but_the_first_two_layers(exported_heart):
    ops = [n.op_type for n in onnx.load(exported_heart["onnx-int8"]).graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    flags = _int8_conv_weights(exported_heart["onnx-int8"])
    assert flags[:2] == [False, False] and all(flags[2:]) and len(flags) == 21  # onenet_ed4: 21 convolutions
    record = json.loads(open(exported_heart["out"] / "model_int8.onnx.json").read())
    quant = record["quantization"]
    assert quant["calibration_slices"] == 16 and len(quant["float_layers"]) == 2
    assert os.path.getsize(exported_heart["onnx-int8"]) < quant["fp32_bytes"]


@pytest.mark.parametrize("float_layers", [0, 3])
def test_quantize_int8_keeps_the_first_layers_float(exported_heart, tmp_path, float_layers):
    slices = [s[None].numpy() for s in _training_slices(exported_heart)[:4]]
    out = str(tmp_path / "int8.onnx")
    kept = quantize_int8(exported_heart["onnx"], out, slices, float_layers=float_layers)
    assert len(kept) == float_layers
    flags = _int8_conv_weights(out)
    assert flags == [False] * float_layers + [True] * (len(flags) - float_layers)


def test_int8_calibrated_on_the_training_split_only(exported_heart):
    record = json.loads(open(exported_heart["out"] / "model_int8.onnx.json").read())
    train = get_datalists("heart", exported_heart["task"])["train"]
    assert sorted(record["quantization"]["calibration_cases"]) == sorted(str(t["image"]) for t in train)


def test_int8_argmax_agrees_with_fp32_on_most_voxels(exported_heart):
    x = _training_slices(exported_heart)
    fp32 = OnnxRuntimeNetwork(exported_heart["onnx"])(x)
    int8 = OnnxRuntimeNetwork(exported_heart["onnx-int8"])(x)
    assert 0.05 <= float(fp32.argmax(1).float().mean()) <= 0.95  # both classes: agreement is not trivial
    assert float((fp32.argmax(1) == int8.argmax(1)).float().mean()) >= 0.97
    margin = (fp32[:, 1] - fp32[:, 0]).flatten()
    margin8 = (int8[:, 1] - int8[:, 0]).flatten()
    assert float(torch.corrcoef(torch.stack([margin, margin8]))[0, 1]) >= 0.95
    record = json.loads(open(exported_heart["out"] / "model_int8.onnx.json").read())
    assert record["quantization"]["argmax_agreement_with_fp32"] >= 0.97


def test_torchscript_export_equals_network(exported_heart):
    net = optimize_for_inference(exported_heart["network"])
    loaded = torch.jit.load(exported_heart["torchscript"])
    x = torch.randn(2, 1, 29, 41)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("count,expected", [(7, [3, 2, 2]), (3, [1, 1, 1]), (2, [1, 1]), (1, [1])])
def test_calibration_slices_spread_over_cases_and_depth(tmp_path, count, expected):
    from tests.data_trees import make_msd_task

    task = make_msd_task(tmp_path, "heart", n_train=4, n_test=0, shape=(20, 24, 12))
    parser = _heart_parser(task)
    slices, files, split_file = calibration_slices(parser, count)
    assert split_file == str(tmp_path / "bundle" / "output" / "datalist.json")  # none saved: the default split
    train = [str(t["image"]) for t in get_datalists("heart", task)["train"]]
    assert len(train) == 3  # 4 cases, 20% validation
    chosen = [train[i] for i in sorted({int(i) for i in np.linspace(0, 2, min(count, 3))})]
    assert files == chosen
    assert len(slices) == count
    start = 0
    for case, n in zip(files, expected):
        volume = _preprocessed_slices(parser, case).numpy()  # (D, C, H, W), D = 12
        for k, s in enumerate(slices[start : start + n]):
            assert s.shape == (1, *volume.shape[1:]) and s.dtype == np.float32
            np.testing.assert_array_equal(s[0], volume[int((k + 0.5) * 12 / n)])  # evenly along the depth
        start += n


def test_calibration_reader_batches_equal_shapes():
    slices = [np.full((1, 1, 4, 4), i, np.float32) for i in range(5)] + [np.zeros((1, 1, 8, 4), np.float32)]
    reader = SliceCalibrationReader(slices, "image", batch=2)
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed["image"])
    assert [f.shape[0] for f in feeds] == [2, 2, 1, 1] and feeds[-1].shape == (1, 1, 8, 4)
    np.testing.assert_array_equal(np.concatenate(feeds[:3])[:, 0, 0, 0], [0, 1, 2, 3, 4])
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["image"], feeds[0])


def test_calibration_needs_a_slice(tmp_path):
    with pytest.raises(ValueError, match="at least 1 slice"):
        calibration_slices(_heart_parser(tmp_path), 0)


def test_missing_onnx_extra_is_a_clear_error(tmp_path, monkeypatch, capsys):
    ckpt, _ = save_checkpoint(tmp_path / "model.pt", "heart")
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r"pip install 'onenet-med\[onnx\]'"):
        export_bundle(HEART, tmp_path / "out", "onnx", checkpoint=ckpt, overrides=TINY)
    argv = ["export", "--bundle", str(HEART), "--checkpoint", ckpt, "--format", "onnx-int8", "--out", str(tmp_path)]
    assert main(argv + ["--override", "network_def#features=4"]) == 2
    assert "onenet-med[onnx]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_torchscript_checkpoint_is_refused(tmp_path):
    ckpt, _ = save_checkpoint(tmp_path / "model.ts", "heart", torchscript=True)
    with pytest.raises(ValueError, match="model.ts: a TorchScript archive; export needs the bundle's state dict"):
        export_bundle(HEART, tmp_path / "out", "torchscript", checkpoint=ckpt, overrides=TINY)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export_bundle(HEART, tmp_path, "tflite")
    with pytest.raises(SystemExit):
        main(["export", "--bundle", str(HEART), "--format", "tflite", "--out", str(tmp_path)])


def test_calibration_slices_of_a_natural_image_task_are_its_training_images(tmp_path):
    """VOC: one slice per training image, after the bundle's preprocessing (RGB, resized to 256x256)."""
    from tests.data_trees import make_voc_tree

    voc = make_voc_tree(tmp_path)
    parser = load_bundle_config(BUNDLES / "onenet_voc", {"dataset_dir": str(voc), "bundle_root": str(tmp_path)})
    slices, files, _ = calibration_slices(parser, 5)
    train = [str(t["image"]) for t in get_datalists("voc", voc)["train"]]
    assert files == train and len(slices) == len(train) == 2  # fewer images than asked for: each once
    expected = parser.get_parsed_content("preprocessing")({"image": train[1]})["image"].as_tensor().numpy()
    assert slices[1].shape == (1, 3, 256, 256)
    np.testing.assert_array_equal(slices[1][0], expected)


def test_calibration_uses_the_split_training_saved(tmp_path):
    """The training cases are those training wrote into output/datalist.json, not a fresh default split."""
    from onenet_med.bundle import write_split
    from tests.data_trees import make_msd_task

    task = make_msd_task(tmp_path, "heart", n_train=4, n_test=0, shape=(20, 24, 12))
    parser = _heart_parser(task)
    items = {item["case_id"]: item for item in get_datalists("heart", task, val_fraction=0.2, seed=0)["train"]}
    items.update({item["case_id"]: item for item in get_datalists("heart", task, val_fraction=0.2)["validation"]})
    assert sorted(items) == ["case_000", "case_001", "case_002", "case_003"]
    saved = tmp_path / "bundle" / "output" / "datalist.json"
    lists = {"train": [items["case_001"], items["case_003"]], "validation": [items["case_000"], items["case_002"]]}
    write_split(saved, lists, task="heart", val_fraction=0.5, seed=7)
    slices, files, split_file = calibration_slices(parser, 4)
    assert split_file == str(saved) and len(slices) == 4
    assert files == [str(items["case_001"]["image"]), str(items["case_003"]["image"])]


def _generic_msd_model(tmp_path):
    """A model 'trained' with bundles/onenet_msd on the custom task: models/model.pt with models/task.json beside
    it, as training writes them (2 MRI channels, 3 classes named core and rim; width 4, not the default)."""
    from onenet_med.bundle.record import build_network, task_record, write_task_record
    from tests.data_trees import CUSTOM_TASK, make_msd_task

    task = make_msd_task(tmp_path / "data", CUSTOM_TASK, n_train=3, n_test=1)
    net = build_network("onenet_ed4", 2, 3, features=4).eval()
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    torch.save(net.state_dict(), models / "model.pt")
    write_task_record(models / "task.json", task_record(CUSTOM_TASK, net, spatial_size=None, batch_size=4))
    return task, models / "model.pt", net


def test_export_of_a_generic_msd_model_reads_its_task_json(tmp_path, capsys):
    """onenet_msd: channels, classes, names and width come from task.json beside the checkpoint (no overrides);
    the calibration reads that task's training data; task.json lands beside the exported model, where predict
    --backend onnxruntime --model reads it."""
    from onenet_med.inference import Predictor

    task, ckpt, net = _generic_msd_model(tmp_path)
    msd, out = BUNDLES / "onenet_msd", tmp_path / "exported"
    root = {"bundle_root": str(tmp_path / "run")}
    record = export_bundle(msd, out, "onnx-int8", checkpoint=ckpt, dataset_dir=task, overrides=root,
                           calibration_count=4)  # fmt: skip
    assert (record["in_channels"], record["out_channels"]) == (2, 3)
    assert record["class_names"] == ["background", "core", "rim"] and record["network"] == "onenet_ed4"
    assert record["overrides"] == {} and record["task_record"] == "task.json"
    assert (out / "task.json").read_text() == (ckpt.parent / "task.json").read_text()
    assert record["quantization"]["calibration_cases"][0].startswith(str(task / "imagesTr"))
    fp32 = export_bundle(msd, out, "onnx", checkpoint=ckpt, overrides=root)  # no data needed for fp32
    assert fp32["check"]["max_abs_diff_vs_torch"] < 1e-4 * max(1.0, fp32["check"]["max_abs_logit"])
    predictor = Predictor.from_bundle(msd, backend="onnxruntime", model=out / "model.onnx")
    assert predictor.spec.class_names == ("background", "core", "rim") and predictor.spec.in_channels == 2
    case = task / "imagesTs" / "case_003.nii.gz"
    torch_predictor = Predictor.from_bundle(msd, checkpoint=ckpt, device="cpu")
    ort, reference = (
        predictor.predict_volume(case, probabilities=True),
        torch_predictor.predict_volume(case, probabilities=True),
    )
    assert ort.labels.shape == (20, 24, 12)
    np.testing.assert_allclose(ort.probabilities, reference.probabilities, atol=1e-4)
    argv = ["predict", "--bundle", str(msd), "--backend", "onnxruntime", "--model", str(out / "model_int8.onnx")]
    assert main([*argv, str(case), "--output", str(tmp_path / "pred"), "--no-progress"]) == 0
    assert "core mL" in capsys.readouterr().out


def test_export_refuses_a_folder_holding_another_models_task(tmp_path):
    task, ckpt, _ = _generic_msd_model(tmp_path)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "task.json").write_text("{}")
    with pytest.raises(ValueError, match=r"exported/task.json holds the task of another model"):
        export_bundle(BUNDLES / "onenet_msd", out, "onnx", checkpoint=ckpt)
    assert sorted(p.name for p in out.iterdir()) == ["task.json"]

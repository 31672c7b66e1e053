"""``onenet-med export``: a trained bundle's network as ONNX (fp32 or int8) or TorchScript, for deployment.

::

    onenet-med export --bundle bundles/onenet_demo --checkpoint bundles/onenet_demo/models/model.pt \\
        --format onnx-int8 --out exported/ --override network_def#features=16

What is exported is the inference copy of the network (:func:`onenet_med.networks.optimize_for_inference`: eval
mode, BatchNorm folded exactly into the convolutions), with a dynamic batch, height and width: input ``image``
``(B, C, H, W)`` float32, output ``logits`` ``(B, K, H, W)``.

- ``onnx``: ``<out>/model.onnx`` (torch's dynamo exporter, one file). After writing, ONNX Runtime is run on a
  random odd-sized batch and its logits are compared with PyTorch's (recorded as ``check``).
- ``onnx-int8``: ``<out>/model_int8.onnx``: ONNX Runtime static post-training quantization in QDQ format
  (``quantize_static``, per-channel int8 weights, uint8 activations, MinMax calibration; the first two
  convolutions stay float, ``--float-layers``), calibrated on
  ``--calibration-slices`` (default 64) 2D slices of the **training** split (the one training saved,
  ``output/datalist.json``; of ``--dataset_dir``, else the bundle's ``dataset_dir``) after the bundle's own inference
  preprocessing. The slices are spread evenly over the
  training cases and, within a volume, evenly along the slicing axis (background slices included, as at inference).
  The record holds the voxel agreement of the int8 argmax with the fp32 argmax on those slices.
- ``torchscript``: ``<out>/model.ts`` (``torch.jit.script``), usable with ``onenet-med predict --checkpoint``.

The model is that of the checkpoint's ``task.json`` (written by training beside it: task, channels, classes,
normalisation, network arguments; a model trained with ``onenet_msd`` on any dataset needs no overrides), and that
record is copied into ``--out`` beside the exported file, where ``onenet-med predict --model`` reads it.
Every file records what it is (:data:`onenet_med.inference.backends.RECORD_KEY`: ONNX ``metadata_props`` /
TorchScript extra file, and ``<out>/<file>.json`` beside it): format, input/output names, channels, classes,
network and overrides, checkpoint, and the bundle's preprocessing identity, so that ``onenet-med predict`` refuses a
model made for other inputs. Files are written under temporary names and renamed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_CALIBRATION_SLICES",
    "DEFAULT_FLOAT_LAYERS",
    "EXPORT_FORMATS",
    "SliceCalibrationReader",
    "add_parser",
    "calibration_slices",
    "export_bundle",
    "export_onnx",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

#: formats and the file each writes into ``--out``
EXPORT_FORMATS = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx", "torchscript": "model.ts"}
#: 2D slices of the training data that calibrate the int8 activation ranges by default
DEFAULT_CALIBRATION_SLICES = 64
#: leading convolutions that stay float in int8 models (see :func:`quantize_int8`)
DEFAULT_FLOAT_LAYERS = 2


def export_onnx(model: nn.Module, path: str | os.PathLike, in_channels: int, opset: int | None = None) -> None:
    """Write ``model`` as one ONNX file with a dynamic batch, height and width (torch's dynamo exporter).

    Args:
        model: a 2D network in eval mode, ``(B, in_channels, H, W) -> (B, K, H, W)``.
        path: the ``.onnx`` file (written in place; callers write to a temporary name).
        in_channels: input channels (the example input's).
        opset: ONNX opset (default: the exporter's).
    """
    from torch.export import Dim

    example = torch.randn(2, in_channels, 48, 80)  # batch 2 and sizes > 1: no dimension is specialised away
    dims = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            os.fspath(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=(dims,),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )


def calibration_slices(
    parser: Any, count: int = DEFAULT_CALIBRATION_SLICES, axis: int = 2
) -> tuple[list[np.ndarray], list[str], str]:
    """``count`` 2D slices of the training split after the bundle's inference preprocessing.

    The training split is the one the checkpoint's training run saved (``output_dir/datalist.json``, as
    ``evaluate.json`` reads it: :func:`onenet_med.bundle.config.saved_datalists`), else the bundle's default split.
    Cases are taken evenly over the training list (all when there are fewer than ``count``), slices evenly along
    ``axis`` of each volume (the Predictor's slicing axis after RAS orientation); natural-image tasks give one slice
    per image, so at most as many slices as training images.

    Args:
        parser: the bundle's config (:func:`onenet_med.bundle.load_bundle_config`, with ``dataset_dir`` and the
            checkpoint's ``ckpt_path``: its ``task.json`` defines the task and the preprocessing).
        count: number of slices (>= 1).
        axis: slicing axis of the preprocessed volume.

    Returns:
        ``(slices, case files, split file)``: float32 arrays ``(1, C, H, W)``, the image files they come from, and
        the saved split looked for (it may not exist).

    Raises:
        FileNotFoundError: no dataset at the bundle's ``dataset_dir``.
        ValueError: ``count`` < 1 or an empty training split.
    """
    from onenet_med.bundle.config import saved_datalists

    if count < 1:
        raise ValueError(f"calibration needs at least 1 slice, got {count}")
    spec = parser.get_parsed_content("task_spec")
    preprocessing = parser.get_parsed_content("preprocessing")
    lists, split_file = saved_datalists(parser, splits=("train",))
    train = lists["train"]
    if not train:
        dataset_dir = parser.get_parsed_content("dataset_dir")
        raise ValueError(f"{dataset_dir}: the training split is empty; nothing to calibrate on")
    chosen = sorted({int(i) for i in np.linspace(0, len(train) - 1, min(count, len(train)))})
    quota = [count // len(chosen) + (i < count % len(chosen)) for i in range(len(chosen))]
    slices: list[np.ndarray] = []
    files: list[str] = []
    for index, n in zip(chosen, quota):
        item = train[index]
        image = preprocessing({"image": item["image"]})["image"].as_tensor().float()
        files.append(str(item["image"]))
        if not spec.is_volume:
            slices.append(image[None].numpy())
            continue
        depth = image.shape[1 + axis]
        for z in sorted({int((k + 0.5) * depth / n) for k in range(n)}):
            slices.append(image.select(1 + axis, z)[None].contiguous().numpy())
    return slices, files, split_file


def _task_record_target(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[str, str] | None:
    """``(text, target path)`` of the task record to copy beside the exported model, or ``None`` when the
    checkpoint has none.

    Raises:
        ValueError: ``out_dir`` already holds the task record of another model (naming it).
    """
    from onenet_med.bundle.record import TASK_RECORD

    source = Path(checkpoint).parent / TASK_RECORD
    if not source.is_file():
        return None
    text = source.read_text()
    target = Path(out_dir) / TASK_RECORD
    if target.is_file() and target.read_text() != text:
        raise ValueError(
            f"{target} holds the task of another model ({source} differs): export into another folder, since "
            "an exported model is used with the task.json beside it"
        )
    return text, str(target)


class SliceCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over 2D slices: batches of up to ``batch`` slices of equal size.

    Args:
        slices: ``(1, C, H, W)`` float32 arrays (:func:`calibration_slices`).
        input_name: the model's input name.
        batch: slices per feed.
    """

    def __init__(self, slices: Sequence[np.ndarray], input_name: str = "image", batch: int = 8):
        self.slices = list(slices)
        self.input_name = input_name
        self.batch = batch
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(self._batches())

    def _batches(self) -> list[dict[str, np.ndarray]]:
        feeds: list[dict[str, np.ndarray]] = []
        group: list[np.ndarray] = []
        for s in self.slices:
            if group and (len(group) == self.batch or s.shape != group[0].shape):
                feeds.append({self.input_name: np.concatenate(group)})
                group = []
            group.append(s)
        if group:
            feeds.append({self.input_name: np.concatenate(group)})
        return feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = iter(self._batches())


def quantize_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    slices: Sequence[np.ndarray],
    float_layers: int = DEFAULT_FLOAT_LAYERS,
) -> list[str]:
    """Static QDQ post-training quantization of ``fp32_path`` into ``int8_path``: per-channel int8 weights, uint8
    activations with MinMax ranges over ``slices``; ONNX Runtime's quantization pre-processing (shape inference and
    graph optimisation) first.

    Args:
        fp32_path: the float model.
        int8_path: where the quantized model goes.
        slices: calibration inputs ``(1, C, H, W)``.
        float_layers: the first ``float_layers`` convolutions (graph order: the input layer and its readers) stay
            float, with float inputs. On the demo an 8-bit input step (0.03 standard deviations of the MRI
            intensity) times the first layer's steepest weight (62: a sharp grey/white matter intensity threshold)
            moved the held-out mean Dice by -0.017; with the first two layers in float by +0.0005.

    Returns:
        the names of the convolutions kept in float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from onenet_med.inference.backends import import_onnx

    if float_layers < 0:
        raise ValueError(f"float_layers must be >= 0, got {float_layers}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # ONNX shape inference only: ORT's symbolic shape inference gives up on the padding arithmetic
        quant_pre_process(os.fspath(fp32_path), prepared, skip_symbolic_shape=True)
        convs = [n.name for n in import_onnx().load(prepared).graph.node if n.op_type == "Conv"]
        keep = convs[:float_layers]
        quantize_static(
            prepared,
            os.fspath(int8_path),
            SliceCalibrationReader(slices),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep,
        )
    return keep


def _set_onnx_record(path: str, record: Mapping[str, Any]) -> None:
    from onenet_med.inference.backends import RECORD_KEY, import_onnx

    onnx = import_onnx()
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props if p.key != RECORD_KEY}
    onnx.helper.set_model_props(model, {**props, RECORD_KEY: json.dumps(record)})
    onnx.save(model, path)


def _argmax_agreement(fp32_path: str, int8_path: str, slices: Sequence[np.ndarray]) -> float:
    """Fraction of voxels of ``slices`` where the int8 model's argmax equals the fp32 model's."""
    from onenet_med.inference.backends import OnnxRuntimeNetwork

    fp32, int8 = OnnxRuntimeNetwork(fp32_path), OnnxRuntimeNetwork(int8_path)
    same = total = 0
    for s in slices:
        x = torch.from_numpy(s)
        a, b = fp32(x).argmax(1), int8(x).argmax(1)
        same += int((a == b).sum())
        total += a.numel()
    return same / max(total, 1)


def _compare_with_torch(model: nn.Module, onnx_path: str, in_channels: int) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on a random odd-sized batch (no data needed): the largest absolute difference
    and the largest absolute logit (random inputs can drive a trained network's logits far out of its range)."""
    from onenet_med.inference.backends import OnnxRuntimeNetwork

    shape = (2, in_channels, 37, 45)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    diff = float((OnnxRuntimeNetwork(onnx_path)(x) - expected).abs().max())
    return {"input": f"randn{list(shape)}", "max_abs_diff_vs_torch": diff, "max_abs_logit": float(expected.abs().max())}


def export_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    fmt: str = "onnx",
    checkpoint: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    calibration_count: int = DEFAULT_CALIBRATION_SLICES,
    opset: int | None = None,
    float_layers: int = DEFAULT_FLOAT_LAYERS,
) -> dict[str, Any]:
    """Export a bundle's trained network (see the module docstring).

    Args:
        bundle_dir: bundle folder.
        out_dir: output folder (created when missing).
        fmt: one of :data:`EXPORT_FORMATS`.
        checkpoint: the bundle's weights (state dict ``.pt``; default ``models/model.pt``).
        dataset_dir: data for the int8 calibration (default: the bundle's ``dataset_dir``).
        overrides: bundle config overrides used in training (``{"network_def#features": 16}``).
        calibration_count: int8 calibration slices.
        float_layers: leading convolutions kept in float in the int8 model (:func:`quantize_int8`).
        opset: ONNX opset (default: the exporter's).

    Returns:
        the record written into the model and into ``<out_dir>/<file>.json`` (with ``file`` = the model's path).

    Raises:
        ValueError: unknown format, a TorchScript checkpoint (needs the state dict), bad calibration settings.
        ImportError: ONNX formats without the ``onnx`` extra.
        FileNotFoundError: no bundle, checkpoint or calibration data.
    """
    from onenet_med.bundle.config import load_bundle_config
    from onenet_med.engine.atomic import atomic_path, atomic_write_text
    from onenet_med.inference.backends import (
        INPUT_NAME,
        OUTPUT_NAME,
        RECORD_KEY,
        import_onnx,
        import_onnxruntime,
        preprocessing_identity,
    )
    from onenet_med.inference.predictor import checkpoint_path, load_network, use_checkpoint
    from onenet_med.networks import optimize_for_inference

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    if fmt.startswith("onnx"):
        import_onnx()
        ort = import_onnxruntime()
    overrides = dict(overrides or {})
    if dataset_dir is not None:
        overrides["dataset_dir"] = os.fspath(dataset_dir)
    parser = load_bundle_config(bundle_dir, overrides)
    name = parser.get_parsed_content("_meta_#name", default=Path(bundle_dir).name)
    ckpt = checkpoint_path(parser, checkpoint)
    use_checkpoint(parser, ckpt)  # the task.json beside it defines the task and the network's arguments
    task_record = _task_record_target(ckpt, out_dir)  # refused before any work when --out holds another model's
    spec = parser.get_parsed_content("task_spec")
    network, ckpt = load_network(parser, ckpt, torch.device("cpu"), name)
    if isinstance(network, torch.jit.ScriptModule):
        raise ValueError(f"{ckpt}: a TorchScript archive; export needs the bundle's state dict (models/model.pt)")
    # ONNX: the portable form (pixel shuffles as DepthToSpace); TorchScript runs the CPU fast path's
    model = optimize_for_inference(network, portable=fmt != "torchscript")
    preprocessing = parser.get_parsed_content("preprocessing")
    path = os.path.join(os.fspath(out_dir), EXPORT_FORMATS[fmt])
    record: dict[str, Any] = {
        "format": fmt,
        "file": os.path.basename(path),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input": "(B, in_channels, H, W) float32 after the bundle's preprocessing; B, H, W dynamic",
        "output": "(B, out_channels, H, W) float32 logits",
        "in_channels": int(spec.in_channels),
        "out_channels": int(spec.num_classes),
        "class_names": list(spec.class_names),
        "bundle": name,
        "network": parser.get_parsed_content("network_name"),
        "overrides": {k: v for k, v in overrides.items() if k not in ("dataset_dir", "bundle_root")},  # not the model's
        "checkpoint": os.path.abspath(ckpt),
        "task_record": None if task_record is None else os.path.basename(task_record[1]),
        "optimized": "onenet_med.networks.optimize_for_inference (BatchNorm folded)",
        "preprocessing": preprocessing_identity(spec, preprocessing),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    start = time.perf_counter()
    if fmt == "torchscript":
        scripted = torch.jit.script(model)
        with atomic_path(path) as tmp:
            torch.jit.save(scripted, tmp, _extra_files={RECORD_KEY: json.dumps(record)})
    else:
        record["onnxruntime"] = ort.__version__
        os.makedirs(os.fspath(out_dir), exist_ok=True)
        with tempfile.TemporaryDirectory(dir=os.fspath(out_dir), prefix=".export.") as tmp_dir:
            fp32 = os.path.join(tmp_dir, "fp32.onnx")
            export_onnx(model, fp32, spec.in_channels, opset)
            record["check"] = _compare_with_torch(model, fp32, spec.in_channels)
            written = fp32
            if fmt == "onnx-int8":
                slices, files, split_file = calibration_slices(parser, calibration_count)
                written = os.path.join(tmp_dir, "int8.onnx")
                kept = quantize_int8(fp32, written, slices, float_layers)
                record["quantization"] = {
                    "method": "onnxruntime.quantization.quantize_static, QDQ, per-channel int8 weights, "
                    "uint8 activations, MinMax calibration",
                    "calibration_slices": len(slices),
                    "float_layers": kept,
                    "calibration_dataset_dir": os.path.abspath(parser.get_parsed_content("dataset_dir")),
                    "calibration_split": os.path.abspath(split_file) if os.path.isfile(split_file) else None,
                    "calibration_cases": files,
                    "argmax_agreement_with_fp32": _argmax_agreement(fp32, written, slices),
                    "fp32_bytes": os.path.getsize(fp32),
                }
            _set_onnx_record(written, record)
            with atomic_path(path) as tmp:
                os.replace(written, tmp)
    if task_record is not None:
        atomic_write_text(task_record[1], task_record[0])
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["bytes"] = os.path.getsize(path)
    atomic_write_text(path + ".json", json.dumps(record, indent=2) + "\n")
    logger.info(f"{name}: wrote {path} ({record['bytes'] / 1e6:.2f} MB, {fmt})")
    return {**record, "file": path}


def add_parser(subparsers) -> None:
    """Register ``onenet-med export``."""
    from onenet_med.inference.cli import add_override_option

    p = subparsers.add_parser(
        "export",
        help="export a trained bundle's network as ONNX (fp32 / int8) or TorchScript",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/onenet_demo")
    p.add_argument("--checkpoint", default=None, help="state dict (.pt); default <bundle>/models/model.pt")
    p.add_argument("--format", required=True, choices=list(EXPORT_FORMATS), help="onnx, onnx-int8 or torchscript")
    p.add_argument(
        "--out", required=True, help="output folder: model.onnx, model_int8.onnx or model.ts, and <file>.json"
    )
    p.add_argument(
        "--dataset_dir", "--dataset-dir", default=None, help="int8 calibration data (default: the bundle's dataset_dir)"
    )
    p.add_argument(
        "--calibration-slices",
        type=int,
        default=DEFAULT_CALIBRATION_SLICES,
        metavar="N",
        help=f"training slices that calibrate int8 (default {DEFAULT_CALIBRATION_SLICES})",
    )
    add_override_option(p)
    p.add_argument(
        "--float-layers",
        type=int,
        default=DEFAULT_FLOAT_LAYERS,
        metavar="N",
        help=f"onnx-int8: the first N convolutions stay float (default {DEFAULT_FLOAT_LAYERS}; 0 = all int8)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export; returns 0 on success, 2 on an error (printed with the file it concerns)."""
    from onenet_med.inference.cli import parse_overrides

    try:
        record = export_bundle(
            args.bundle,
            args.out,
            args.format,
            checkpoint=args.checkpoint,
            dataset_dir=args.dataset_dir,
            overrides=parse_overrides(args.override),
            calibration_count=args.calibration_slices,
            opset=args.opset,
            float_layers=args.float_layers,
        )
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, ImportError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    line = f"wrote {record['file']} ({record['bytes'] / 1e6:.2f} MB, {record['format']}"
    if "check" in record:
        line += f", ORT vs torch max |diff| {record['check']['max_abs_diff_vs_torch']:.2e}"
    if "quantization" in record:
        q = record["quantization"]
        agreement = q["argmax_agreement_with_fp32"]
        line += f", {q['calibration_slices']} calibration slices, argmax agreement with fp32 {agreement:.4f}"
    print(line + ")")
    return 0

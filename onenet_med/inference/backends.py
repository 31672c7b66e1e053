"""Inference backends: what runs the bundle's 2D network inside :class:`~onenet_med.inference.Predictor`.

- ``"torch"``: the network (``nn.Module`` or TorchScript) itself.
- ``"onnxruntime"``: an ONNX model written by ``onenet-med export`` (fp32 or int8), run by an ONNX Runtime
  ``InferenceSession`` on the CPU with as many intra-op threads as torch uses (``torch.get_num_threads()``).
  :class:`OnnxRuntimeNetwork` wraps the session as a module, so preprocessing, MONAI ``SliceInferer`` and the
  inversion stay exactly the torch backend's; only the forward pass differs.

Every exported model carries a record (JSON, in the ONNX file's ``metadata_props`` or the TorchScript archive's
``extra files`` under :data:`RECORD_KEY`): format, input/output names, channels, classes and the bundle's
preprocessing identity (:func:`preprocessing_identity`). A model whose record does not match the bundle it is used
with is refused (:func:`check_model_record`), naming the file and what differs.

``onnx`` and ``onnxruntime`` are an optional extra: ``pip install 'onenet-med[onnx]'``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RECORD_KEY",
    "OnnxRuntimeNetwork",
    "check_model_record",
    "import_onnx",
    "import_onnxruntime",
    "preprocessing_identity",
    "read_torchscript_record",
]

#: backends of :class:`~onenet_med.inference.Predictor` and ``onenet-med predict --backend``
BACKENDS = ("torch", "onnxruntime")
#: key of the model record in ONNX ``metadata_props`` and in TorchScript extra files
RECORD_KEY = "onenet_med"
#: graph input / output names of exported models
INPUT_NAME = "image"
OUTPUT_NAME = "logits"

_ONNX_EXTRA = "pip install 'onenet-med[onnx]'"


def import_onnxruntime():
    """``import onnxruntime``, or an ImportError that says how to install the optional extra."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"the onnxruntime backend needs ONNX Runtime, which is not installed: {_ONNX_EXTRA} ({error})"
        ) from error
    return onnxruntime


def import_onnx():
    """``import onnx``, or an ImportError that says how to install the optional extra."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            f"exporting to ONNX needs the onnx package, which is not installed: {_ONNX_EXTRA} ({error})"
        ) from error
    return onnx


def preprocessing_identity(task_spec: Any, preprocessing: Any) -> dict[str, Any]:
    """What a model expects of its input and means by its output, from the bundle's task spec and inference chain.

    Two bundle configurations with equal identities feed a network the same tensors: the same task (channels,
    classes), the same transforms in the same order, the same intensity normalisation (task statistics or CT window)
    and the same in-plane resize and padding.

    Args:
        task_spec: the bundle's :class:`onenet_med.data.TaskSpec`.
        preprocessing: the bundle's ``preprocessing`` (:class:`monai.transforms.Compose`).

    Returns:
        a JSON-friendly dict.
    """
    from monai.transforms import DivisiblePadd, Resized

    transforms = list(preprocessing.flatten().transforms)
    resize = next((t for t in transforms if isinstance(t, Resized)), None)
    pad = next((t for t in transforms if isinstance(t, DivisiblePadd)), None)
    return {
        "task": task_spec.name,
        "in_channels": int(task_spec.in_channels),
        "num_classes": int(task_spec.num_classes),
        "class_names": list(task_spec.class_names),
        "modality": task_spec.modality,
        "intensity_stats": list(task_spec.intensity_stats) if task_spec.intensity_stats else None,
        "ct_window": list(task_spec.ct_window) if task_spec.ct_window else None,
        "spatial_size": [int(s) for s in resize.resizer.spatial_size][:2] if resize is not None else None,
        "divisible_k": [int(k) for k in pad.padder.k][:2] if pad is not None else None,
        "transforms": [type(t).__name__ for t in transforms],
    }


def check_model_record(path: str | os.PathLike, record: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> None:
    """Refuse a model exported for other inputs or classes than ``identity`` (see :func:`preprocessing_identity`).

    A model without a record (exported by other means) is accepted here; its channel count is checked against the
    graph's input instead (:class:`OnnxRuntimeNetwork`).

    Raises:
        ValueError: naming ``path`` and every field that differs.
    """
    if not record:
        return
    recorded = record.get("preprocessing", {})
    differences = [
        f"{key}: model {recorded.get(key)!r}, bundle {value!r}"
        for key, value in identity.items()
        if recorded.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"{os.fspath(path)}: exported for other inputs than this bundle's (task {recorded.get('task')!r}, "
            f"bundle task {identity.get('task')!r}): {'; '.join(differences)}. Export it again from this bundle "
            "(onenet-med export) or pass the overrides it was exported with."
        )


def read_torchscript_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a TorchScript archive written by ``onenet-med export`` (None for other archives)."""
    files = {RECORD_KEY: ""}
    torch.jit.load(os.fspath(path), map_location="cpu", _extra_files=files)
    return json.loads(files[RECORD_KEY]) if files[RECORD_KEY] else None


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX model run by ONNX Runtime, callable like the network it was exported from.

    Args:
        path: ``.onnx`` file (``onenet-med export --format onnx|onnx-int8``, or any model with one
            ``(B, C, H, W)`` float input and one ``(B, K, H, W)`` float output).
        device: ``cpu`` (CPUExecutionProvider) or ``cuda[:N]`` (CUDAExecutionProvider, needs ``onnxruntime-gpu``).
        threads: intra-op threads (default: ``torch.get_num_threads()``, the torch backend's).
        spinning: let ONNX Runtime's intra-op threads spin-wait for the next run (its default). Turn it off when
            several sessions (or torch) take turns on the same cores, as in an interleaved benchmark: an idle
            session's spinning threads otherwise hold the cores of the one running (measured: ORT int8 at 2 threads
            66 ms interleaved with spinning on, 39 ms with it off, 35 ms alone; ``scripts/bench_onnx.py``).

    Shapes:
        ``(B, C, H, W)`` float32 -> ``(B, K, H, W)`` float32 logits, on the input's device.

    Raises:
        ImportError: onnxruntime is not installed (the message says how to install it).
        FileNotFoundError: no such file.
        ValueError: not an ONNX model, or not one 4D input and one 4D output (the message names the file).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        spinning: bool = True,
    ):
        super().__init__()
        ort = import_onnxruntime()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such ONNX model")
        device = torch.device(device)
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    f"{self.path}: device {device} needs ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu); "
                    f"available: {ort.get_available_providers()}; use device cpu"
                )
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        elif device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"{self.path}: the onnxruntime backend runs on cpu or cuda, not {device}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        except Exception as error:
            raise ValueError(f"{self.path}: not a loadable ONNX model ({type(error).__name__}: {error})") from error
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
            raise ValueError(
                f"{self.path}: expected one (B, C, H, W) input and one (B, K, H, W) output, got inputs "
                f"{[(i.name, i.shape) for i in inputs]} and outputs {[(o.name, o.shape) for o in outputs]}"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        text = self.session.get_modelmeta().custom_metadata_map.get(RECORD_KEY)
        self.record: dict[str, Any] | None = json.loads(text) if text else None
        # channels: the record's, else the graph's (None when the exporter left it symbolic)
        channels = inputs[0].shape[1]
        self.in_channels = (self.record or {}).get("in_channels", channels if isinstance(channels, int) else None)
        classes = outputs[0].shape[1]
        self.out_channels = (self.record or {}).get("out_channels", classes if isinstance(classes, int) else None)
        self.threads = options.intra_op_num_threads
        self.spinning = spinning
        self.device = device

    def check(self, in_channels: int, out_channels: int, identity: Mapping[str, Any] | None = None) -> None:
        """Raise a ValueError naming the file when the model does not fit ``in_channels`` / ``out_channels`` or,
        when it has a record, the bundle's preprocessing ``identity``."""
        for what, mine, theirs in (
            ("input channels", self.in_channels, in_channels),
            ("classes", self.out_channels, out_channels),
        ):
            if mine is not None and mine != theirs:
                raise ValueError(f"{self.path}: the model has {mine} {what}, the bundle needs {theirs}")
        if identity is not None:
            check_model_record(self.path, self.record, identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, threads={self.threads}, providers={self.session.get_providers()}"

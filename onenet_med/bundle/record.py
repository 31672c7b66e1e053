"""The task a model was trained for, saved beside its checkpoint (``models/task.json``).

Everything a trained model needs to be used again without repeating the dataset's properties: the task
(channels, class names, modality and its normalisation, CT window, in-plane size and multiple, ...: the whole
:class:`~onenet_med.data.TaskSpec`, with the network name, in-plane size and batch size the run used) and the
network's constructor arguments (``network_def#features`` and any other override). Training writes it when the
trainer starts (:class:`TaskRecordSaver`); ``evaluate.json``, ``inference.json`` and
:meth:`onenet_med.inference.Predictor.from_bundle` read the one beside the checkpoint they load
(:func:`read_task_record`), so ``onenet-med predict --bundle bundles/onenet_msd --checkpoint run/models/model.pt``
works on a model trained on any MSD-layout dataset.

The checkpoint itself stays a bare ``state_dict`` (model-zoo convention, ``monai.bundle ckpt_export``).
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from onenet_med.data.tasks import TaskSpec

__all__ = [
    "TASK_RECORD",
    "TaskRecordSaver",
    "build_network",
    "network_arguments",
    "read_task_record",
    "task_record",
    "write_task_record",
]

logger = logging.getLogger(__name__)

#: File name of the record, in the checkpoint's folder.
TASK_RECORD = "task.json"
_FORMAT = 1

# how each network built by build_network was built (the module itself carries nothing: TorchScript, ONNX and
# state dicts stay as they are)
_BUILT: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def build_network(
    name: str, in_channels: int, out_channels: int, trained: Mapping[str, Any] | None = None, **kwargs: Any
) -> torch.nn.Module:
    """The bundles' ``network_def``: :func:`onenet_med.networks.get_network`, remembering its arguments.

    Args:
        name: registry name.
        in_channels: input channels.
        out_channels: classes.
        trained: the record of the checkpoint about to be loaded (:func:`read_task_record`): when it describes a
            network of the same ``name``, its constructor arguments are used, except those given in ``kwargs``.
        kwargs: constructor overrides (``network_def#features`` on the command line).
    """
    from onenet_med.networks import get_network

    saved = (trained or {}).get("network") or {}
    if saved.get("name") == name:
        kwargs = {**saved.get("kwargs", {}), **kwargs}
    network = get_network(name, in_channels, out_channels, **kwargs)
    _BUILT[network] = {"name": name, "in_channels": in_channels, "out_channels": out_channels, "kwargs": kwargs}
    return network


def network_arguments(network: torch.nn.Module) -> dict[str, Any] | None:
    """``{"name", "in_channels", "out_channels", "kwargs"}`` of a network made by :func:`build_network` (DDP and
    DataParallel wrappers unwrapped), else ``None``."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        network = network.module
    return _BUILT.get(network)


def task_record(
    task_spec: TaskSpec, network: torch.nn.Module, spatial_size: Any = None, batch_size: int | None = None
) -> dict[str, Any]:
    """The record of a training run: the task as trained (network name, in-plane size and batch size as used) and
    the network's constructor arguments.

    Raises:
        ValueError: ``network`` was not built by :func:`build_network` (its arguments are unknown).
    """
    arguments = network_arguments(network)
    if arguments is None:
        raise ValueError(
            f"{type(network).__name__} was not built by onenet_med.bundle.record.build_network: its constructor "
            "arguments cannot be saved with the model"
        )
    changes: dict[str, Any] = {"network": arguments["name"], "spatial_size": spatial_size}
    if batch_size is not None:
        changes["batch_size"] = int(batch_size)
    return {"format": _FORMAT, "task": task_spec.replace(**changes).to_dict(), "network": arguments}


def write_task_record(path: str | os.PathLike, record: Mapping[str, Any]) -> str:
    """Write ``record`` as JSON atomically; returns the path."""
    from onenet_med.engine.atomic import atomic_write_text

    try:
        text = json.dumps(record, indent=2) + "\n"
    except TypeError as error:
        raise ValueError(f"{os.fspath(path)}: the network's arguments must be JSON values ({error})") from error
    atomic_write_text(path, text)
    return os.fspath(path)


def read_task_record(checkpoint: str | os.PathLike | None) -> dict[str, Any] | None:
    """The record beside ``checkpoint`` (``<its folder>/task.json``), or ``None`` when there is none.

    Raises:
        ValueError: the file exists but is not a task record (the message names it).
    """
    if checkpoint is None:
        return None
    path = Path(checkpoint).parent / TASK_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != _FORMAT:
            raise ValueError(f"format {record.get('format')!r}, expected {_FORMAT}")
        record["task_spec"] = TaskSpec.from_dict(record["task"])
        if not isinstance(record.get("network", {}).get("kwargs"), dict):
            raise ValueError("no network arguments")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a task record of onenet-med ({error}); delete it or retrain") from error
    return record


class TaskRecordSaver:
    """Ignite handler: write :func:`task_record` to ``ckpt_dir/task.json`` when the trainer starts (rank 0 only).

    Args:
        ckpt_dir: the checkpoints' folder.
        task_spec: the task trained.
        network: the network as built by :func:`build_network` (the bundle's ``network_def``).
        spatial_size: the in-plane size the transforms use (the bundle's ``spatial_size``).
        batch_size: the training batch size (slices).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        task_spec: TaskSpec,
        network: torch.nn.Module,
        spatial_size: Any = None,
        batch_size: int | None = None,
    ) -> None:
        self.path = os.path.join(os.fspath(ckpt_dir), TASK_RECORD)
        self.record = task_record(task_spec, network, spatial_size, batch_size)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any) -> None:
        from onenet_med.bundle.workflow import is_main_process

        if is_main_process():
            write_task_record(self.path, self.record)
            logger.info(f"saved the task and network arguments in {self.path}")

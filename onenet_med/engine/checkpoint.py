"""Checkpoint I/O, resume and best-model saving for Ignite/MONAI engines.

- Every file is written atomically (temporary name + ``os.replace``): a crash while saving leaves the previous
  checkpoint intact (Ignite's ``Checkpoint`` removes the old file *before* writing the new one, so it is not used).
- ``latest.pt`` holds ``{name: obj.state_dict()}`` for the model, optimizer, lr scheduler, the trainer engine
  (epoch/iteration) and ``rng``: the Python, NumPy, torch (CPU and CUDA) random states and the random states of the
  MONAI random transforms (``transforms=`` argument), so that a resumed run draws the same shuffles and
  augmentations as an uninterrupted one: 1 epoch + resume 1 epoch gives the same weights as 2 epochs.
- ``model.pt`` (best model on a key metric) is the network's bare ``state_dict``, as MONAI model-zoo bundles and
  ``monai.bundle ckpt_export`` expect.
- Loading always uses ``torch.load(..., weights_only=True)``; everything saved here is tensors and plain values.

Typical bundle wiring (train.json)::

    "train#handlers": [..., {"_target_": "ValidationHandler", ...},
        {"_target_": "onenet_med.engine.CheckpointResumer", "ckpt_dir": "@ckpt_dir",
         "load_dict": "@checkpoint_objects", "transforms": "@train#preprocessing",
         "enabled": "$onenet_med.switch(@resume, 'resume')"},
        {"_target_": "onenet_med.engine.LatestCheckpointSaver", "ckpt_dir": "@ckpt_dir",
         "save_dict": "@checkpoint_objects", "transforms": "@train#preprocessing"}]
    "checkpoint_objects": {"model": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}

The engine a saver/resumer is attached to is added as ``"trainer"`` automatically (a config cannot refer to the
trainer from inside its own handler list). Resume limits: with DataLoader workers the per-epoch worker seeds come
from the torch RNG (restored), but ``persistent_workers=True`` keeps worker-side transform states that cannot be
saved; in DDP, rank 0's RNG states are saved and restored on every rank.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader

from onenet_med.engine.atomic import atomic_torch_save
from onenet_med.switches import switch

__all__ = [
    "BEST_FILENAME",
    "LATEST_FILENAME",
    "BestCheckpointSaver",
    "BundleCheckpointLoader",
    "CheckpointResumer",
    "LatestCheckpointSaver",
    "RNGState",
    "describe_state_mismatch",
    "load_checkpoint",
    "save_checkpoint",
]

LATEST_FILENAME = "latest.pt"
BEST_FILENAME = "model.pt"
logger = logging.getLogger(__name__)


def _unwrap(obj: Any) -> Any:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return obj.module
    return obj


def _random_transforms(root: Any) -> list[Any]:
    """MONAI ``Randomizable`` objects reachable from transforms / a Compose / a Dataset / a DataLoader, in a fixed
    (depth-first) order."""
    from monai.transforms import Randomizable, Transform

    found: list[Any] = []
    seen: set[int] = set()

    def is_container(value: Any) -> bool:
        return isinstance(value, (Transform, Randomizable, torch.utils.data.Dataset, torch.utils.data.DataLoader))

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                if is_container(item):
                    visit(item)
            return
        if isinstance(obj, Randomizable) and isinstance(getattr(obj, "R", None), np.random.RandomState):
            found.append(obj)
        for value in vars(obj).values():
            if is_container(value):
                visit(value)
            elif isinstance(value, (list, tuple)) and value and is_container(value[0]):
                visit(value)

    if root is not None:
        visit(root)
    return found


def _numpy_state(rs: np.random.RandomState) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = rs.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(rs: np.random.RandomState, state: Mapping[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    rs.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


class RNGState:
    """Random states as a ``state_dict``/``load_state_dict`` object (saved in checkpoints under ``"rng"``).

    Covers Python's ``random``, NumPy's global RNG, torch's CPU RNG, every CUDA device's RNG, and the ``R`` of each
    MONAI random transform reachable from ``transforms``.

    Args:
        transforms: a transform, Compose, list of transforms, Dataset or DataLoader whose random transforms are
            captured (main-process copies; DataLoader workers are re-seeded from the torch RNG each epoch).
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        return {
            "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "numpy": _numpy_state(np.random.mtrand._rand),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state(t.R) for t in _random_transforms(self.transforms)],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
        _set_numpy_state(np.random.mtrand._rand, state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
        transforms = _random_transforms(self.transforms)
        if len(transforms) != len(state["transforms"]):
            raise ValueError(
                f"the checkpoint holds random states of {len(state['transforms'])} random transforms but the "
                f"current pipeline has {len(transforms)}: resume with the same transforms as the interrupted run"
            )
        for transform, saved in zip(transforms, state["transforms"]):
            _set_numpy_state(transform.R, saved)


def save_checkpoint(path: str | os.PathLike, objects: Mapping[str, Any]) -> None:
    """Save ``{name: obj.state_dict()}`` atomically (DDP/DataParallel models are unwrapped).

    Args:
        path: destination file; its folder is created when missing.
        objects: objects with ``state_dict()`` (model, optimizer, scheduler, engine, :class:`RNGState`, ...).
    """
    atomic_torch_save({name: _unwrap(obj).state_dict() for name, obj in objects.items()}, path)


def load_checkpoint(
    path: str | os.PathLike,
    objects: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and, when ``objects`` are given, restore them.

    A bare ``state_dict`` file (like ``model.pt``) is accepted when ``objects`` holds a single object.

    Args:
        path: checkpoint file.
        objects: ``{name: obj}`` to restore via ``load_state_dict`` (Ignite's ``Checkpoint.load_objects``).
        map_location: device for the loaded tensors.
        strict: strict key matching for modules.

    Returns:
        the loaded dictionary.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # corrupt or foreign file: say which one
        raise RuntimeError(f"cannot load checkpoint {path}: {error}") from error
    if objects:
        if len(objects) == 1:
            name = next(iter(objects))
            if name not in checkpoint:
                checkpoint = {name: checkpoint}
        missing = [name for name in objects if name not in checkpoint]
        if missing:
            raise KeyError(f"checkpoint {path} has no entries {missing} (it has {sorted(checkpoint)})")
        Checkpoint.load_objects(to_load=dict(objects), checkpoint=checkpoint, strict=strict)
    return checkpoint


class LatestCheckpointSaver:
    """Save ``latest.pt`` (objects + trainer state + RNG states) atomically at the end of every ``save_interval``-th
    epoch and at the last epoch; rank 0 only in DDP.

    The save runs after every other end-of-epoch handler (validation, lr step, ...) whatever the attach order, so
    that the stored state is exactly the state the next epoch starts from.

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: ``{name: obj}`` with ``state_dict()``; the attached engine is added as ``"trainer"`` and
            :class:`RNGState` as ``"rng"`` unless present.
        filename: checkpoint file name.
        save_interval: epochs between saves.
        transforms: random transforms whose states are saved (see :class:`RNGState`).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = LATEST_FILENAME,
        save_interval: int = 1,
        transforms: Any = None,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        self.path = os.path.join(os.fspath(ckpt_dir), filename)
        self.save_dict = dict(save_dict)
        self.save_dict.setdefault("rng", RNGState(transforms))
        self.save_interval = int(save_interval)

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.STARTED, self._run_last)

    def _run_last(self, engine: Engine) -> None:
        """Re-register the save so that it follows every end-of-epoch handler attached before the run started."""
        engine.remove_event_handler(self, Events.EPOCH_COMPLETED)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.save_interval and epoch != engine.state.max_epochs:
            return
        if idist.get_rank() == 0:
            save_checkpoint(self.path, self.save_dict)
            logger.info(f"saved checkpoint {self.path} (epoch {epoch}, iteration {engine.state.iteration})")


class CheckpointResumer:
    """At ``STARTED``, restore the objects, the engine's epoch/iteration and the RNG states from ``latest.pt``.

    Args:
        ckpt_dir: folder holding the checkpoint.
        load_dict: ``{name: obj}`` to restore; the attached engine is added as ``"trainer"`` and :class:`RNGState`
            as ``"rng"`` unless present.
        filename: checkpoint file name.
        missing_ok: start from scratch (with a log message) when the checkpoint does not exist, instead of raising.
        transforms: random transforms whose states are restored (the same as given to the saver).
        map_location: device for the loaded tensors.
        enabled: when false, ``attach`` does nothing (a switch: ``true false True False 1 0``; config:
            ``"enabled": "$onenet_med.switch(@resume, 'resume')"``).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        filename: str = LATEST_FILENAME,
        missing_ok: bool = False,
        transforms: Any = None,
        map_location: str | torch.device = "cpu",
        enabled: bool = True,
    ) -> None:
        self.enabled = switch(enabled, "enabled")  # bool('false') would be True
        self.path = os.path.join(os.fspath(ckpt_dir), filename)
        self.load_dict = dict(load_dict)
        self.load_dict.setdefault("rng", RNGState(transforms))
        self.missing_ok = missing_ok
        self.map_location = map_location
        self.resumed_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.load_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            if self.missing_ok:
                logger.info(f"no checkpoint {self.path}: training from scratch")
                return
            raise FileNotFoundError(f"cannot resume: checkpoint {self.path} does not exist")
        max_epochs = engine.state.max_epochs
        load_checkpoint(self.path, self.load_dict, self.map_location)
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(
                f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond max_epochs={max_epochs}; "
                "raise max_epochs to train further"
            )
        engine.state.max_epochs = max_epochs  # the checkpoint's own max_epochs must not cut the run short
        self.resumed_epoch = engine.state.epoch
        logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}")


class BestCheckpointSaver:
    """Save the model's ``state_dict`` atomically whenever the key metric improves (attach to the evaluator).

    Its own state (best value and epoch) has ``state_dict``/``load_state_dict``: put it in the latest checkpoint's
    objects so that a resumed run keeps comparing with the best value seen before the interruption.

    Args:
        ckpt_dir: folder of the file.
        model: the network (DDP wrappers are unwrapped).
        metric_name: key of ``engine.state.metrics`` to compare.
        mode: ``"max"`` or ``"min"``.
        filename: file name (``model.pt``: bundle convention).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        model: torch.nn.Module,
        metric_name: str,
        mode: str = "max",
        filename: str = BEST_FILENAME,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = os.path.join(os.fspath(ckpt_dir), filename)
        self.model = model
        self.metric_name = metric_name
        self.mode = mode
        self.best_value = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": float(self.best_value), "best_epoch": int(self.best_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])

    def __call__(self, engine: Engine) -> None:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"metric {self.metric_name!r} not computed; available: {sorted(engine.state.metrics)}")
        value = float(engine.state.metrics[self.metric_name])
        better = value > self.best_value if self.mode == "max" else value < self.best_value
        if math.isnan(value) or not better:
            return
        self.best_value, self.best_epoch = value, int(engine.state.epoch)
        if idist.get_rank() == 0:
            atomic_torch_save(_unwrap(self.model).state_dict(), self.path)
            logger.info(f"saved best model {self.path} ({self.metric_name}={value:.4f}, epoch {self.best_epoch})")


def describe_state_mismatch(model: torch.nn.Module, state: Mapping[str, Any]) -> str:
    """What keeps ``state`` (a ``state_dict``) from loading into ``model``: counts of missing and unexpected keys
    and of shape mismatches, with the first of each.

    Returns:
        e.g. ``"5 missing keys (first: encoder.0.conv.weight), 3 unexpected keys (first: stem.2.bias),
        1 shape mismatch (stem.0.weight: checkpoint (4, 1, 1, 1), network (4, 1, 3, 3))"``; ``""`` when it fits.
    """
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} (first: {unexpected[0]})")
    if shapes:
        key, theirs, ours = shapes[0]
        plural = "es" * (len(shapes) > 1)
        parts.append(f"{len(shapes)} shape mismatch{plural} (first: {key}: checkpoint {theirs}, network {ours})")
    return ", ".join(parts)


class BundleCheckpointLoader(CheckpointLoader):
    """MONAI's :class:`~monai.handlers.CheckpointLoader` whose failures name the checkpoint file and say what
    does not fit (the bundles' evaluate and inference configs use it).

    A missing file raises ``FileNotFoundError`` naming it; weights of another network (or of other settings such
    as ``network_def#features``) raise ``ValueError`` naming the file, the network and the mismatched keys,
    instead of PyTorch's list of hundreds of key names. Arguments are MONAI's.
    """

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            raise FileNotFoundError(
                f"checkpoint {self.load_path} does not exist: train the bundle first or pass --ckpt_path PATH"
            )
        try:
            super().__call__(engine)
        except RuntimeError as error:
            model = next((obj for obj in self.load_dict.values() if isinstance(obj, torch.nn.Module)), None)
            state = torch.load(self.load_path, map_location="cpu", weights_only=True)
            if model is None or not isinstance(state, Mapping):
                raise
            state = state.get("model", state) if isinstance(state.get("model"), Mapping) else state
            mismatch = describe_state_mismatch(model, state)
            if not mismatch:
                raise
            raise ValueError(
                f"checkpoint {self.load_path} does not fit the network {type(_unwrap(model)).__name__} of this "
                f"configuration: {mismatch}. Weights of another network or other settings? Pass the overrides it "
                f"was trained with (--network_name, --network_def#features, ...){_record_hint(self.load_path)}"
            ) from error


def _record_hint(checkpoint: str | os.PathLike) -> str:
    """Where a bundle reads a model's training settings from, when that file is missing."""
    from onenet_med.bundle.record import TASK_RECORD

    record = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), TASK_RECORD)
    if os.path.isfile(record):
        return ""
    return f"; no {record} beside it records them (training writes it: keep it with the checkpoint)"

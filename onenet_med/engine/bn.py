"""Guard against stale BatchNorm running statistics (SPEC §6a).

With Conv -> ReLU -> BN ordering and only 1x1 layers, eval-mode predictions were seen labelling ~99% of the
background as grey matter because the running statistics (exponential averages with momentum 0.1, lagging behind
fast-changing weights) no longer matched the activations. Recomputing them on training data with the current
weights, as a plain cumulative average, fixed it. :func:`recompute_bn_stats` does that; :class:`BNStatsRefresh`
runs it before every validation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BNStatsRefresh", "batchnorm_layers", "recompute_bn_stats"]

logger = logging.getLogger(__name__)


def batchnorm_layers(model: torch.nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers (1D/2D/3D, SyncBatchNorm) that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _images(batch: Any, image_key: str) -> torch.Tensor:
    if isinstance(batch, Mapping):
        return batch[image_key]
    if isinstance(batch, Sequence) and not isinstance(batch, torch.Tensor):
        return batch[0]
    return batch


@torch.no_grad()
def recompute_bn_stats(
    model: torch.nn.Module,
    loader_or_batches: Iterable[Any],
    num_batches: int | None = None,
    device: str | torch.device | None = None,
    image_key: str = "image",
    prepare: Callable[[Any], torch.Tensor] | None = None,
) -> int:
    """Recompute every BatchNorm layer's running mean/variance as the plain average over training batches.

    The running statistics are reset, momentum is set to ``None`` (cumulative average), the model runs forward in
    train mode without gradients, then each module's train/eval mode and each layer's momentum are restored.
    Parameters are not touched. In DDP the wrapped module is used and the statistics are averaged over ranks.

    Args:
        model: network (DDP/DataParallel wrappers are unwrapped).
        loader_or_batches: iterable of batches: dicts (``batch[image_key]``), ``(image, label)`` pairs or tensors.
        num_batches: use at most this many batches (``None``: all).
        device: device to run on (default: the model's).
        image_key: key of the image in dict batches.
        prepare: optional ``batch -> image tensor`` instead of the default extraction.

    Returns:
        the number of batches used (0 when the model has no BatchNorm layer or no batch was given: nothing changes).
    """
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    momenta = [layer.momentum for layer in layers]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    used = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        model.train()
        for batch in loader_or_batches:
            if num_batches is not None and used >= num_batches:
                break
            images = prepare(batch) if prepare is not None else _images(batch, image_key)
            images = images.as_tensor() if hasattr(images, "as_tensor") else images
            model(images.to(device))
            used += 1
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if used == 0:  # nothing seen: keep the old statistics rather than the reset ones
        for layer, (mean, var, count) in zip(layers, saved):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)
    if idist.get_world_size() > 1:  # every rank takes part, also one that saw no batch
        for layer in layers:
            layer.running_mean.copy_(idist.all_reduce(layer.running_mean.clone()) / idist.get_world_size())
            layer.running_var.copy_(idist.all_reduce(layer.running_var.clone()) / idist.get_world_size())
    return used


class BNStatsRefresh:
    """Ignite handler: :func:`recompute_bn_stats` on training data before each validation.

    Attach it to the evaluator (default event ``"STARTED"``: runs at the start of every evaluation, whatever the
    order of the trainer's handlers), or to the trainer with ``event="EPOCH_COMPLETED"`` before the validation
    handler. Its cost is ``num_batches`` forward passes.

    Args:
        model: the network.
        loader: training data (a DataLoader or any iterable of batches).
        num_batches: batches to average over (``None``: the whole loader).
        device: device to run on (default: the model's).
        image_key: key of the image in dict batches.
        event: Ignite event name to run at.
        interval: with ``EPOCH_COMPLETED`` on the trainer, run every this many epochs (match ``val_interval``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        num_batches: int | None = 20,
        device: str | torch.device | None = None,
        image_key: str = "image",
        event: str = "STARTED",
        interval: int = 1,
    ) -> None:
        self.model = model
        self.loader = loader
        self.num_batches = num_batches
        self.device = device
        self.image_key = image_key
        self.event = Events[event.upper()]
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        event = self.event(every=self.interval) if self.interval > 1 else self.event
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        used = recompute_bn_stats(self.model, self.loader, self.num_batches, self.device, self.image_key)
        if used:
            logger.info(f"recomputed BatchNorm statistics on {used} training batches")

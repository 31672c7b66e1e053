"""The bundles' speed switches as an Ignite handler: inference copy, channels-last memory, ``torch.compile``.

The bundles list :class:`NetworkSwitches` among an engine's handlers (after the ``CheckpointLoader`` in
``inference.json`` and ``evaluate.json``, so the checkpoint still loads into the plain network). When the engine
starts it replaces ``engine.network`` by what the switches ask for:

- ``optimize`` (evaluators only): the inference copy of the loaded network
  (:func:`onenet_med.networks.optimize_for_inference`: BatchNorm folded, oneDNN calls on CPU; same logits);
- ``channels_last``: 4D weights (and, through the networks' own conversion, activations) in channels-last
  memory, which tensor-core GPUs prefer;
- ``compile``: ``torch.compile`` (opt-in: the first iterations pay for the compilation).
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["NetworkSwitches", "apply_switches", "retain_freed_cpu_memory"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_RETAINED = False


def retain_freed_cpu_memory(trim_threshold_mb: int = 1024) -> bool:
    """Let glibc's malloc keep freed memory for the next tensors instead of handing it back to the OS.

    Inference on CPU allocates every activation afresh; by default glibc maps large blocks from the OS and unmaps
    them when freed, so every forward pass pays a page fault per 4 KiB of activation (20,800 per 320x320 slice
    through onenet_ed4, 12% of its CPU time; with width 16 the forward pass took 29 ms instead of 22 ms).
    This raises the mmap threshold to its maximum (32 MiB: larger blocks are still mapped) and keeps up to
    ``trim_threshold_mb`` of freed heap memory: the process keeps its peak memory instead of returning it.
    Process-wide and permanent; a no-op returning False where the C library has no ``mallopt`` (not glibc).
    """
    global _RETAINED
    if _RETAINED:
        return True
    try:
        import ctypes
        import ctypes.util

        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb * 1024 * 1024) == 1 and ok
    _RETAINED = ok
    return ok


def apply_switches(
    network: nn.Module, optimize: bool = False, channels_last: bool = False, compile: bool = False
) -> nn.Module:
    """``network`` as the switches ask: its inference copy (``optimize``; TorchScript modules are used as they are;
    a DistributedDataParallel / DataParallel wrapper is dropped: every process runs its own copy, as in
    ``multi_gpu_evaluate.json``), converted to channels-last memory in place, wrapped by ``torch.compile``."""
    if optimize and isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module  # the wrapper only synchronises gradients, which inference has none of
    if optimize and not isinstance(network, torch.jit.ScriptModule):
        from onenet_med.networks import optimize_for_inference

        network = optimize_for_inference(network)
    if channels_last:
        if isinstance(network, nn.parallel.DistributedDataParallel):  # its gradient buckets view the old layout
            logger.warning("channels_last is ignored for a DistributedDataParallel network")
        else:
            network = network.to(memory_format=torch.channels_last)
    if compile:
        network = torch.compile(network)
    return network


class NetworkSwitches:
    """Replace ``engine.network`` when the engine starts (see the module docstring).

    Args:
        optimize: run the inference copy (only for engines that do not train it).
        channels_last: channels-last weights.
        compile: ``torch.compile`` the network.

    Each takes a bool or a switch spelling (:func:`onenet_med.switch`: ``true false True False 1 0``).

    Raises:
        onenet_med.switches.SwitchError: any other value, naming the switch.
    """

    def __init__(
        self, optimize: bool | str = False, channels_last: bool | str = False, compile: bool | str = False
    ) -> None:
        from onenet_med.switches import switch

        self.optimize = switch(optimize, "optimize")
        self.channels_last = switch(channels_last, "channels_last")
        self.compile = switch(compile, "compile")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not (self.optimize or self.channels_last or self.compile):
            return
        network = getattr(engine, "network", None)
        if network is None:
            raise ValueError("NetworkSwitches needs an engine with a network (a MONAI trainer or evaluator)")
        engine.network = apply_switches(network, self.optimize, self.channels_last, self.compile)
        logger.info(
            f"network switches: optimize={self.optimize}, channels_last={self.channels_last}, compile={self.compile}"
        )

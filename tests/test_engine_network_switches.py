"""NetworkSwitches: the bundles' optimize / channels_last / compile switches swap an engine's network at start."""

from __future__ import annotations

import sys

import pytest
import torch
from ignite.engine import Engine
from parameterized import parameterized
from torch import nn

import onenet_med.engine.network_switches as network_switches
from onenet_med.engine import NetworkSwitches, apply_switches
from onenet_med.networks import get_network
from onenet_med.networks.optimize import FastConv2d
from onenet_med.switches import SwitchError


def _engine(network: nn.Module) -> Engine:
    engine = Engine(lambda e, batch: None)  # the network is only replaced at start, not run here
    engine.network = network
    return engine


@parameterized.expand(
    [
        ("nothing", {}, False, False, False),
        ("optimize", {"optimize": True}, True, False, False),
        ("channels_last", {"channels_last": True}, False, True, False),
        ("compile", {"compile": True}, False, False, True),
        ("all", {"optimize": True, "channels_last": True, "compile": True}, True, True, True),
    ]
)
def test_switches_replace_the_network_at_start(_, switches, optimized, channels_last, compiled):
    torch.manual_seed(0)
    plain = get_network("unet4", 1, 2, features=4).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = plain(x)
    engine = _engine(plain)
    NetworkSwitches(**switches).attach(engine)
    engine.run([x], max_epochs=1)
    net = engine.network
    assert (net is plain) == (not optimized and not compiled)
    assert any(isinstance(m, FastConv2d) for m in net.modules()) == optimized
    assert hasattr(net, "_orig_mod") == compiled
    weights = [p for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1 and p.shape[1] > 1]
    layouts = {w.is_contiguous(memory_format=torch.channels_last) for w in weights}
    if channels_last:
        assert layouts == {True}
    elif not optimized:  # (the inference copy stores its own k x k weights channels-last)
        assert layouts == {False}
    if not compiled:  # compiling on CPU takes long: the Predictor's slow test runs a compiled network
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4)


def test_optimize_leaves_torchscript_modules_alone():
    scripted = torch.jit.script(get_network("onenet_ed4", 1, 2, features=4).eval())
    assert apply_switches(scripted, optimize=True) is scripted


def test_engine_without_network_is_an_error():
    engine = Engine(lambda e, batch: None)
    NetworkSwitches(optimize=True).attach(engine)
    with pytest.raises(ValueError, match="needs an engine with a network"):
        engine.run([0], max_epochs=1)


@parameterized.expand([("false", False), ("True", True), ("0", False), (1, True)])
def test_switch_values_from_the_command_line(value, expected):
    assert NetworkSwitches(optimize=value).optimize is expected


def test_bad_switch_value():
    with pytest.raises(SwitchError, match="switch 'compile' takes true, false, True, False, 1 or 0; got 'yes please'"):
        NetworkSwitches(compile="yes please")


def test_optimize_unwraps_a_data_parallel_network():
    """multi_gpu_evaluate.json wraps the network in DistributedDataParallel: each process runs its own inference
    copy of the wrapped module (DataParallel stands in: DDP needs a process group)."""
    plain = get_network("onenet_ed4", 1, 2, features=4).eval()
    fast = apply_switches(nn.DataParallel(plain), optimize=True)
    assert not isinstance(fast, nn.DataParallel) and any(isinstance(m, FastConv2d) for m in fast.modules())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retain_freed_cpu_memory(monkeypatch):
    """Freed activations are reused: page faults of a repeated allocation drop to ~0 (glibc)."""
    import resource

    monkeypatch.setattr(network_switches, "_RETAINED", False)
    assert network_switches.retain_freed_cpu_memory() is True and network_switches._RETAINED
    assert network_switches.retain_freed_cpu_memory() is True  # idempotent
    for _ in range(4):  # 12 MB, freed at once: kept by the heap (after it has grown to hold it, in a few rounds)
        torch.empty(3_000_000).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(3_000_000).fill_(1.0)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 500  # 5 x 2930 pages without it


def test_retain_freed_cpu_memory_without_mallopt(monkeypatch):
    import ctypes

    def no_libc(*args, **kwargs):
        raise OSError("no such library")

    monkeypatch.setattr(network_switches, "_RETAINED", False)
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert network_switches.retain_freed_cpu_memory() is False and not network_switches._RETAINED

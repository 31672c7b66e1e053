"""Smoke test of scripts/bench_networks.py at a tiny input size (the real benchmark is not a timed test)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from onenet_med.networks.optimize import FastConv2d
from onenet_med.profiling import count_flops

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench():
    path = os.path.join(REPO_ROOT, "scripts", "bench_networks.py")
    spec = importlib.util.spec_from_file_location("bench_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_prints_ratios_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures.unet", None)  # optional package
    bench = _load_bench()
    path = tmp_path / "bench.json"
    names = ["unet4", "onenet_ed4", "onenet_ed4+fast", "onenet_ed4_s", "plainconvunet"]
    args = ["--networks", *names, "--size", "32", "--features", "4", "--repeats", "2", "--warmup", "0"]
    assert bench.main(args + ["--threads", "1", "2", "--clock", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "plainconvunet: skipped" in out and "pip install --no-deps dynamic-network-architectures" in out
    assert "onenet_ed4+fast/unet4 @1T" in out and "onenet_ed4+fast/unet4 @2T" in out and "memory" in out
    data = json.loads(path.read_text())
    assert set(data["networks"]) == set(names) - {"plainconvunet"} and data["skipped"] == ["plainconvunet"]
    row, fast = data["networks"]["onenet_ed4"], data["networks"]["onenet_ed4+fast"]
    assert set(row["threads"]) == {"1", "2"} and len(row["threads"]["1"]["all_ms"]) == 2 and data["clock"] == "cpu"
    assert row["gflops"] == fast["gflops"] > 0 and row["params"] == fast["params"]  # counted on the plain network
    cell = fast["threads"]["2"]
    assert cell["gflops_per_s"] == pytest.approx(fast["gflops"] / (cell["median_ms"] / 1e3))
    checks = {(r["ratio"], r["quantity"], r["threads"]): r for r in data["ratios"]}
    latency = checks[("onenet_ed4+fast/unet4", "latency", "1")]
    assert latency["limit"] == 0.25 and latency["target"] == "<= 0.25"
    assert latency["median_ratio"] == pytest.approx(
        fast["threads"]["1"]["median_ms"] / data["networks"]["unet4"]["threads"]["1"]["median_ms"]
    )
    assert checks[("onenet_ed4+fast/unet4", "gflops_per_s", "2")]["target"] == ">= 0.8"
    assert checks[("onenet_ed4/unet4", "memory", None)]["median_ratio"] < 1.0  # fewer weights and activations


def test_networks_are_built_as_named():
    bench = _load_bench()
    fast = bench.build("onenet_ed4+fast", 1, 4, features=16)
    assert any(isinstance(m, FastConv2d) for m in fast.modules()) and not fast.training
    plain = bench.build("onenet_ed4", 1, 4, features=16)
    assert count_flops(plain, (1, 1, 224, 256)) / 1e9 == pytest.approx(1.24, abs=0.05)  # width 16: the slice
    seg = bench.build("segresnet", 1, 4)
    seg = getattr(seg, "net", seg)  # the registry's segresnet wraps MONAI's class (padding to a multiple of 8)
    assert type(seg).__name__ == "SegResNet" and seg.init_filters == 8
    assert sum(p.numel() for p in bench.build("segresnet", 3, 4).parameters()) == pytest.approx(0.40e6, rel=0.02)
    with pytest.raises(SystemExit, match="unknown network"):
        bench.build("nnunet", 1, 4)


def test_plainconvunet_is_nnunets_2d_unet_when_installed():
    pytest.importorskip("dynamic_network_architectures")
    bench = _load_bench()
    net = bench.build("plainconvunet", 3, 4)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(33.5e6, rel=0.01)  # the table
    assert count_flops(net, (1, 3, 256, 256)) / 1e9 == pytest.approx(29.5, rel=0.01)

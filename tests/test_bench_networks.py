"""Smoke test of scripts/bench_networks.py at a tiny input size (the real benchmark is not a timed test)."""

from __future__ import annotations

import importlib.util
import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench():
    path = os.path.join(REPO_ROOT, "scripts", "bench_networks.py")
    spec = importlib.util.spec_from_file_location("bench_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_prints_ratios_and_writes_json(tmp_path, capsys):
    bench = _load_bench()
    path = tmp_path / "bench.json"
    args = ["--networks", "unet4", "onenet_ed4", "onenet_ed4_s", "--size", "32", "--repeats", "2", "--warmup", "0"]
    assert bench.main(args + ["--threads", "1", "--clock", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onenet_ed4/unet4" in out and "onenet_ed4_s/onenet_ed4" in out and "memory" in out
    data = json.loads(path.read_text())
    assert set(data["median_ms"]) == {"unet4", "onenet_ed4", "onenet_ed4_s"}
    assert all(len(v) == 2 for v in data["latency_ms"].values()) and data["clock"] == "cpu"
    ratio = {r["ratio"] + ":" + r["quantity"]: r for r in data["ratios"]}
    assert ratio["onenet_ed4/unet4:memory"]["median_ratio"] < 1.0  # fewer weights and activations
    assert ratio["onenet_ed4/unet4:latency"]["limit"] == 0.35

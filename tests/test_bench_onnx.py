"""Smoke tests of scripts/bench_onnx.py at tiny sizes (the real benchmark is not a timed test): every reported
number is present and consistent with the files and models it describes."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from onenet_med.profiling import measure_latency

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location("bench_onnx", os.path.join(REPO_ROOT, "scripts", "bench_onnx.py"))
pytest.importorskip("onnxruntime")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


@pytest.mark.slow
@pytest.mark.parametrize("sequential", [False, True])
def test_speed_reports_latency_sizes_and_profile(tmp_path, capsys, monkeypatch, sequential):
    timed_together = []  # the models of each measure_latency call: interleaved, or one at a time

    def spy(nets, *args, **kwargs):
        timed_together.append(sorted(nets))
        return measure_latency(nets, *args, **kwargs)

    monkeypatch.setattr(bench, "measure_latency", spy)
    out = tmp_path / "speed.json"
    argv = ["speed", "--width", "4", "--shape", "1", "3", "32", "48", "--threads", "1", "--repeats", "2"]
    argv += ["--sequential"] if sequential else []
    argv += ["--warmup", "0", "--calibration-slices", "2", "--profile", "--workdir", str(tmp_path / "w")]
    assert bench.main(argv + ["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["latency"]["1"]) == {"torch_plain", "torch_optimized", "ort_fp32", "ort_int8", "ort_int8_all"}
    assert data["bytes"]["ort_fp32"] == os.path.getsize(tmp_path / "w" / "fp32.onnx")
    assert data["int8_over_fp32_bytes"] == data["bytes"]["ort_int8"] / data["bytes"]["ort_fp32"]
    assert data["logits"]["ort_fp32_vs_torch_optimized"] <= 1e-4 * max(1, data["logits"]["max_abs_logit"])
    assert "com.microsoft.QLinearConv" in data["profile_ms_per_run"]["int8_graph_ops_after_ort_optimisation"]
    assert "QLinearConv" in data["profile_ms_per_run"]["ort_int8"]
    assert data["ort_spinning"] is False  # interleaved sessions must not spin on each other's cores
    assert data["sequential"] is sequential
    models = list(data["latency"]["1"])
    assert timed_together == ([[m] for m in models] if sequential else [sorted(models)])
    printed = capsys.readouterr().out
    assert "ORT int8 speed-up over ORT fp32" in printed
    assert ("each model on its own" in printed) is sequential


@pytest.mark.slow
def test_dice_scores_every_backend(tmp_path, exported_heart, capsys):
    root = tmp_path / "run"
    os.makedirs(root / "models")
    shutil.copy(exported_heart["checkpoint"], root / "models" / "model.pt")
    out = tmp_path / "dice.json"
    argv = ["dice", "--bundle", os.path.join(REPO_ROOT, "bundles", "onenet_heart"), "--bundle-root", str(root)]
    argv += ["--dataset-dir", str(exported_heart["task"]), "--override", "network_def#features=4"]
    assert bench.main(argv + ["--calibration-slices", "8", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["metrics"]) == {"torch", "ort_fp32", "ort_int8"} and data["calibration_slices"] == 8
    assert data["labels_equal_to_torch"]["ort_fp32"] == 1.0
    assert data["metrics"]["ort_fp32"] == data["metrics"]["torch"]
    assert data["int8_dice_minus_fp32"] == data["metrics"]["ort_int8"]["dice"] - data["metrics"]["ort_fp32"]["dice"]
    assert data["ort_fp32_max_abs_logit_diff_on_held_out_slices"] <= 1e-4
    from_float64 = data["max_abs_logit_diff_from_float64_on_held_out_slices"]
    assert set(from_float64) == {"ort_fp32", "torch", "torch_plain"} and 0 < max(from_float64.values()) <= 1e-4
    assert "int8 mean Dice - fp32 mean Dice" in capsys.readouterr().out

"""Smoke tests of the context scripts at tiny sizes: scripts/bench_context.py, scripts/receptive_field.py and
scripts/position_task.py (the real runs are not timed tests)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script, os.path.join(REPO_ROOT, "scripts", f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_context_prints_ratios_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    args = ["--levels", "4", "--threads", "1", "--size", "32", "--width", "8", "--repeats", "2", "--warmup", "0"]
    args += ["--json", str(path)]
    assert _load("bench_context").main(args + ["--clock", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "onenet_ed4_ctx/onenet_ed4" in out and "flops@256" in out and "latency optimized 1t" in out
    data = json.loads(path.read_text())
    added = data["networks"]["onenet_ed4_ctx"]["params"] - data["networks"]["onenet_ed4"]["params"]
    assert added == 2 * 128 * 65 + 4 * 128  # the context block at the deepest width 8 * 2**4
    ratio = {r["quantity"]: r for r in data["ratios"]}
    assert 1.0 < ratio["flops@256"]["value"] <= 1.05 and ratio["flops@256"]["limit"] == 1.05
    assert ratio["latency optimized 1t"]["limit"] == 1.10 and ratio["latency plain 1t"]["limit"] is None
    assert set(data["median_ms"]["1"]) == {
        f"{n} {p}" for n in ("onenet_ed4", "onenet_ed4_ctx") for p in ("optimized", "plain")
    }


def test_receptive_field_script(tmp_path, capsys):
    path = tmp_path / "rf.json"
    args = ["--networks", "onenet_ed4", "onenet_ed4_ctx", "--size", "64", "--width", "4", "--json", str(path)]
    assert _load("receptive_field").main(args) == 0
    fields = json.loads(path.read_text())["fields"]
    assert (fields["onenet_ed4"]["centre"]["height"], fields["onenet_ed4"]["centre"]["width"]) == (16, 16)
    assert fields["onenet_ed4_ctx"]["corner"]["whole_image"]
    assert "whole image" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["halves", "landmark"])
def test_position_task_batches(task):
    module = _load("position_task")
    image, label = module.BATCHES[task](3, torch.Generator().manual_seed(0))
    assert image.shape[:2] == (3, 1) and label.shape == (3, *image.shape[2:])
    assert set(label.unique().tolist()) <= {0, 1, 2} and (label > 0).any()
    textured = image[:, 0][label > 0]
    assert textured.abs().mean() > 0.8  # the +-1 texture, not the 0.5-std background
    if task == "halves":  # class 1 only in the left half, class 2 only in the right half
        half = label.shape[-1] // 2
        assert not (label[..., half:] == 1).any() and not (label[..., :half] == 2).any()
    else:  # one patch per image; the other class never in the same image
        assert all(len(set(item.unique().tolist()) - {0}) == 1 for item in label)


def test_position_task_short_run(capsys):
    module = _load("position_task")
    assert module.main(["--networks", "onenet_ed4", "--tasks", "halves", "--steps", "2"]) == 0
    assert "solved (dice >= 0.9) in 0 of 1 seeds" in capsys.readouterr().out
    with pytest.raises(ValueError, match="task must be one of"):
        module.train_and_score("onenet_ed4", task="middle")

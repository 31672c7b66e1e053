import importlib.util
import sys
from pathlib import Path

import torch

from onenet_med.data import get_datalists

_SPEC = importlib.util.spec_from_file_location(
    "bench_loader", Path(__file__).parents[1] / "scripts" / "bench_loader.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_synthetic_heart_volumes_and_loader_rate(tmp_path):
    task = bench.make_volumes(tmp_path, n=2, shape=(32, 32, 20))
    items = get_datalists("heart", task, val_fraction=0.0)["train"]
    assert len(items) == 2
    res = bench.loader_rate(task, seconds=0.3, workers=0, batch=4, num_samples=2)
    assert res["batch_shape"] == (4, 1, 32, 32) and res["slices"] > 0 and res["slices_per_s"] > 0
    crop = bench.loader_rate(task, seconds=0.2, workers=0, batch=4, num_samples=2, monai_crop=True)
    assert crop["batch_shape"] == (4, 1, 32, 32)


def test_network_rate_and_missing_registry(monkeypatch, capsys):
    res = bench.network_rate(lambda: torch.nn.Conv2d(1, 2, 3, padding=1), batch=2, hw=(16, 16), steps=2, device="cpu")
    assert res["parameters"] == 2 * 9 + 2 and res["slices_per_s"] > 0 and res["device"] == "cpu"
    monkeypatch.setitem(sys.modules, "onenet_med.networks", None)  # registry not merged / not installed
    assert bench.get_network_factory() is None
    assert "network registry unavailable" in capsys.readouterr().err

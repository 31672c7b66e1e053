"""scripts/bench_train.py runs the real Heart bundle and reports slices/s per network (tiny sizes here)."""

import importlib.util
import json
from pathlib import Path

from tests.conftest import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("bench_train", Path(REPO_ROOT) / "scripts" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_tiny(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--networks", "onenet_ed4", "onenet_e4", "--features", "4", "--spatial-size", "32", "--batch-size", "4"]
    args += ["--iterations", "2", "--warmup", "1", "--cases", "8", "--shape", "24", "24", "4", "--threads", "1"]
    assert load_script().main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["network"] for r in report["results"]]
    assert names == ["onenet_ed4", "onenet_e4"]
    for r in report["results"]:
        assert r["iterations"] == 2 and r["slices_per_second"] > 0
    assert report["results"][0]["ratio_to_first"] == 1.0
    # the width override reached the network: a 4-wide ed4 is tiny
    assert report["results"][0]["parameters"] < 100_000

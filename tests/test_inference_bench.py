"""scripts/bench_predict.py on a tiny volume: the report's numbers are consistent with each other."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_predict", Path(__file__).parents[1] / "scripts" / "bench_predict.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_synthetic_volume(tmp_path):
    path = bench.make_volume(tmp_path / "v.nii.gz", (40, 36, 5))
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    assert data.shape == (40, 36, 5) and data.dtype == np.float32
    assert (data[0] == 0).all() and data[20, 18].min() > 0  # zero border, positive inside
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")


def test_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(
        ["--size", "32", "--slices", "3", "--networks", "onenet_ed4", "basicunet", "--batch-slices", "2",
         "--json", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["volume"] == [32, 32, 3] and report["device"] == "cpu"
    ref, other = report["networks"]["onenet_ed4"], report["networks"]["basicunet"]
    assert ref["slices"] == 3 and ref["batch_slices"] == 2 and "forward_seconds" not in other
    assert 0 < ref["forward_seconds"] and report["end_to_end_over_forward"] == ref["end_to_end_over_forward"]
    assert ref["end_to_end_over_forward"] == ref["end_to_end_seconds"] / ref["forward_seconds"]
    assert ref["end_to_end_over_slices"] == ref["end_to_end_seconds"] / (3 * ref["slice_seconds"])
    assert ref["volumes_per_minute"] == 60 / ref["end_to_end_seconds"]
    assert set(ref["steps"]) == {"load", "preprocess", "inference", "postprocess", "save"}
    assert report["end_to_end_vs_reference"]["onenet_ed4"] == 1.0
    assert "end-to-end / (slices x batch-1 slice forward)" in capsys.readouterr().out


def test_defaults_threads_plain_and_batch_sweep(tmp_path, capsys):
    report = bench.main(["--size", "32", "--slices", "2", "--networks", "onenet_ed4", "onenet_ed4+plain",
                         "--threads", "1", "2"])  # fmt: skip
    assert set(report["by_threads"]) == {"1", "2"} and "networks" not in report  # two thread counts: no top level
    part = report["by_threads"]["2"]
    assert part["threads"] == 2 and len(part["load_average"]) == 2
    fast, plain = part["networks"]["onenet_ed4"], part["networks"]["onenet_ed4+plain"]
    assert fast["batch_slices"] == plain["batch_slices"] == 1  # the Predictor's CPU default
    assert fast["parameters"] < plain["parameters"]  # BatchNorm folded into the inference copy
    sweep = bench.main(["--size", "32", "--slices", "2", "--threads", "1", "--batch-sweep"])
    times = sweep["batch_sweep_seconds_per_slice"]
    assert list(times) == ["1", "2", "4", "8", "16", "32"] and all(t > 0 for t in times.values())
    assert sweep["fastest_batch"] == int(min(times, key=times.get))
    assert "fastest batch" in capsys.readouterr().out


@pytest.mark.slow
def test_onnxruntime_backends(tmp_path):
    pytest.importorskip("onnxruntime")
    report = bench.main(["--size", "32", "--slices", "3", "--networks", "onenet_ed4", "--threads", "1",
                         "--backends", "torch", "onnxruntime", "onnxruntime-int8"])  # fmt: skip
    rows = report["networks"]
    assert list(rows) == ["onenet_ed4", "onenet_ed4 (onnxruntime)", "onenet_ed4 (onnxruntime-int8)"]
    assert [r["backend"] for r in rows.values()] == ["torch", "onnxruntime", "onnxruntime-int8"]
    # both ONNX Runtime rows run the export of the portable inference copy (its extra shuffle groups carry the
    # decoder's BatchNorm offsets: a few more parameters than the torch backend's fast-path copy)
    torch_row, fp32_row, int8_row = rows.values()
    assert fp32_row["parameters"] == int8_row["parameters"] > torch_row["parameters"]
    for row in rows.values():
        assert row["slices"] == 3 and row["volumes_per_minute"] == 60 / row["end_to_end_seconds"]
        assert "forward_seconds" in row  # the reference network: forward times for every backend

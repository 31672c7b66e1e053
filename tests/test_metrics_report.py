"""write_evaluation / format_table: files round-trip, strict JSON, the paper's table layout."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from onenet_med.metrics import SegmentationMetrics, format_table, segmentation_metrics, write_evaluation


def test_write_evaluation_round_trip(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 2)
    label = torch.randint(0, 2, (2, 1, 4, 4, 2))  # class 2 never in the label...
    logits[:, 2] = -10.0  # ...nor predicted: absent -> null
    names = ["background", "left atrium", "scar"]
    metric = SegmentationMetrics(3, class_names=names)
    metric.update((logits, label))
    results = metric.compute()
    paths = write_evaluation(
        tmp_path / "eval", results, names, metric.per_case_rows(), model_name="onenet_ed4", task="heart"
    )
    assert sorted(os.listdir(tmp_path / "eval")) == ["metrics.json", "metrics.md", "per_case.csv"]

    document = json.loads(open(paths["json"]).read())
    for key in ("ce", "dice", "miou", "map50", "volume_dice"):
        assert isinstance(document[key], float) and document[key] == pytest.approx(results[key])
    assert document["model"] == "onenet_ed4" and document["task"] == "heart" and document["num_cases"] == 2
    assert document["per_class"]["left atrium"]["dice"] == pytest.approx(results["dice_left atrium"])
    assert document["per_class"]["left atrium"]["volume_dice"] == pytest.approx(results["volume_dice_left atrium"])
    assert document["per_class"]["scar"] == {"dice": None, "iou": None, "ap50": None, "volume_dice": None}
    assert "map50" in document["definitions"]

    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case_0000", "case_0001"]
    assert float(rows[1]["volume_dice_left atrium"]) == pytest.approx(
        metric.per_case_rows()[1]["volume_dice_left atrium"]
    )
    assert rows[0]["dice_scar"] == ""  # NaN -> empty cell

    markdown = open(paths["markdown"]).read()
    assert "| Method | heart CE | heart mAP0.5 | heart mIoU | heart DSC | heart DSC 3D |" in markdown
    expected_row = "| onenet_ed4 | " + " | ".join(
        f"{results[k]:.4f}" for k in ("ce", "map50", "miou", "dice", "volume_dice")
    )
    assert expected_row in markdown
    assert "| scar | – | – | – | – |" in markdown
    assert not [f for f in os.listdir(tmp_path / "eval") if f.endswith(".tmp")]


def test_write_evaluation_errors(tmp_path):
    results = segmentation_metrics(torch.randn(1, 2, 3, 3), torch.zeros(1, 1, 3, 3), 2)
    with pytest.raises(KeyError, match="no per-class values"):
        write_evaluation(tmp_path, results, ["background", "tumour"], [], model_name="m")
    with pytest.raises(KeyError, match="required metric 'map50'"):
        write_evaluation(tmp_path, {k: v for k, v in results.items() if k != "map50"}, None, [])


def test_format_table_layout():
    heart = {"ce": 0.0041, "map50": 0.4396, "miou": 0.066, "dice": 0.605}
    lung = {"ce": 0.0007, "map50": 0.5531, "miou": 0.009, "dice": math.nan}
    table = format_table(
        [
            {"model": "OneNet-e4", "task": "Heart", "results": heart},
            {"model": "OneNet-e4", "task": "Lung", "results": lung},
            {"model": "U-Net4", "task": "Heart", "results": heart},
        ],
        digits=3,
    )
    lines = table.splitlines()
    assert lines[0] == (
        "| Method | Heart CE | Heart mAP0.5 | Heart mIoU | Heart DSC | Lung CE | Lung mAP0.5 | Lung mIoU | Lung DSC |"
    )
    assert lines[2] == "| OneNet-e4 | 0.004 | 0.440 | 0.066 | 0.605 | 0.001 | 0.553 | 0.009 | – |"
    assert lines[3] == "| U-Net4 | 0.004 | 0.440 | 0.066 | 0.605 | – | – | – | – |"

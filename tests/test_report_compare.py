"""The compare report: Table 1 / Table 2 rows, per-class Dice, checks, label volumes, plots, commands."""

import os

import nibabel as nib
import numpy as np

from onenet_med.report.compare import write_report
from tests.test_compare import BUNDLE, METRICS, NAMES


def _results(tmp_path, prediction=None, truth=None):
    entry = {
        "metrics": METRICS,
        "commands": {"train": "python -m monai.bundle run --x 1"},
        "seconds": {"train": 12.0, "evaluate": 3.0},
        "training": {"epochs": 2, "epoch_length": 3, "iterations": 6, "s_per_iteration": 0.5},
        "curves": {
            "train_loss": [[1, 1.0], [2, 0.5]],
            "validation": {"ce": [[2, 0.4]], "dice": [[2, 0.9]], "dice_grey matter": [[2, 0.92]]},
        },
        "profile": {
            "params": 572676,
            "param_mb": 2.3,
            "gflops": 1.25,
            "latency_ms": {"1": 40.0, "2": 25.0},
            "latency_plain_ms": {"1": 55.0, "2": 30.0},
        },
    }
    if prediction:
        entry["prediction"] = str(prediction)
    return {
        "bundle": BUNDLE,
        "task": "demo",
        "class_names": NAMES,
        "train_cases": ["mni_000", "mni_001"],
        "held_out_cases": ["mni_002"],
        "command": "onenet-med compare --bundle b",
        "setup_commands": ["onenet-med data demo --out d"],
        "machine": {"cpu": "test cpu", "usable_cores": 2},
        "total_seconds": 20.0,
        "profile_input": [1, 1, 32, 32],
        "profile_threads": [1, 2],
        "checks": [
            {"check": "onenet_ed4: dice >= 0.85", "measured": 0.9, "passed": True},
            {"check": "onenet_ed4: dice_white matter >= 0.99", "measured": 0.95, "passed": False},
        ],
        "networks": {
            "onenet_ed4": entry,
            # slower (1 thread) and less accurate: dominated at 1 thread, on the front at 2 threads (faster)
            "unet4": {
                **entry,
                "metrics": {**METRICS, "dice": 0.5},
                "profile": {**entry["profile"], "latency_ms": {"1": 60.0, "2": 20.0}},
            },
        },
    }


def test_write_report_tables_checks_volumes_and_plots(tmp_path):
    affine = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm^3 voxels
    truth = np.zeros((10, 12, 6), np.uint8)
    truth[2:8, 2:10, 1:5] = 2  # 192 grey-matter voxels = 1.92 mL
    truth[4:6, 4:6, 2:4] = 3  # 8 of them white matter: 1.84 mL grey, 0.08 mL white
    pred = truth.copy()
    pred[2:8, 2:10, 1] = 1  # 48 voxels become CSF: 0.48 mL
    image = (truth * 50).astype(np.float32)
    for name, arr in (("img", image), ("lab", truth), ("img_seg", pred)):
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / f"{name}.nii.gz")
    img, lab, seg = (str(tmp_path / f"{n}.nii.gz") for n in ("img", "lab", "img_seg"))
    files = write_report(_results(tmp_path, prediction=seg), tmp_path / "rep", img, [{"image": img, "label": lab}])
    for key in ("loss_curves", "dice_curves", "class_dice", "class_volume_dice", "overlays", "report"):
        assert os.path.getsize(files[key]) > 1000, key
    text = open(files["report"]).read()
    assert "| onenet_ed4 | 0.3000 | 1.0000 | 0.8000 | 0.9000 | 0.9100 |" in text  # Table 1: CE mAP mIoU DSC DSC3D
    assert "| unet4 | 0.3000 | 1.0000 | 0.8000 | 0.5000 | 0.9100 |" in text
    assert "| onenet_ed4 | 0.8000 | 0.9200 | 0.9500 | 0.9000 |" in text  # per class per slice + mean
    assert "| onenet_ed4 | 0.8200 | 0.9300 | – | 0.9100 |" in text  # per 3D case, white matter undefined
    # Table 2: latency of the inference copy, then of the plain network, at 1 and 2 threads
    table2 = "| onenet_ed4 | 0.573 | 2.300 | 1.250 | 40.000 | 25.000 | 55.000 | 30.000 | 6 | 0.500 | 12.000 | 3.000 |"
    assert table2 in text
    assert "Latency / slice (ms), 1 thread(s) | Latency / slice (ms), 2 thread(s)" in text
    assert "- PASS: onenet_ed4: dice >= 0.85 (measured 0.9000)" in text
    assert "- FAIL: onenet_ed4: dice_white matter >= 0.99 (measured 0.9500)" in text
    assert "| ground truth | 0.0 | 1.8 | 0.1 |" in text  # mL: CSF 0, grey 1.84, white 0.08
    assert "| onenet_ed4 prediction | 0.5 | 1.4 | 0.1 |" in text  # grey 1.84 - 0.48 = 1.36
    assert "onenet-med data demo --out d\nonenet-med compare --bundle b" in text
    assert "python -m monai.bundle run --x 1" in text and "- cpu: test cpu" in text
    assert "![Prediction vs ground truth](overlays.png)" in text


def test_report_draws_the_frontier_with_its_table(tmp_path):
    files = write_report(_results(tmp_path), tmp_path / "rep")
    assert os.path.getsize(files["frontier"]) > 1000
    text = open(files["report"]).read()
    section = text[text.index("## Accuracy against latency") : text.index("## Plots")]
    assert "| onenet_ed4 | – | 0.900 | 1.250 | 40.000 | 25.000 | yes | yes |" in section
    assert "| unet4 | – | 0.500 | 1.250 | 60.000 | 20.000 |  | yes |" in section  # dominated at 1 thread only
    assert "![Accuracy against latency per slice](frontier.png)" in section
    assert text.count("(frontier.png)") == 1  # shown under its table, not again under Plots


def test_a_new_plot_and_section_are_one_entry_each(tmp_path, monkeypatch):
    """The extension points: an entry in PLOTS is drawn and shown under Plots; an entry in SECTIONS is written."""
    from onenet_med.report import compare as report

    def plot_example(inputs):
        path = inputs.output_dir / "example.png"
        path.write_bytes(b"png")
        return str(path)

    def section_example(inputs):
        return ["## Example", "", f"{len(inputs.networks)} networks", ""]

    monkeypatch.setattr(report, "PLOTS", [*report.PLOTS, ("example", "An example", plot_example)])
    monkeypatch.setattr(report, "SECTIONS", [*report.SECTIONS[:-1], section_example, report.SECTIONS[-1]])
    (tmp_path / "rep").mkdir()
    files = write_report(_results(tmp_path), tmp_path / "rep")
    text = open(files["report"]).read()
    assert files["example"] == str(tmp_path / "rep" / "example.png")
    assert "![An example](example.png)" in text
    assert text.index("## Example\n\n2 networks") < text.index("## Definitions")
    assert "overlays" not in files  # no prediction: that plot returns None and is left out

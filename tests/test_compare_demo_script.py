"""scripts/demo.sh end to end with its small settings, in the current environment (no venv, no pip)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_demo_script_small_settings(tmp_path, subprocess_env):
    env = {
        **subprocess_env,
        "ONENET_SKIP_INSTALL": "1",
        "PYTHON": sys.executable,
        "ONENET_SMALL": "1",
        "ONENET_DEMO_OUT": str(tmp_path / "report"),
        "ONENET_DEMO_DATA": str(tmp_path / "Task00_MNI152Tissue"),
    }
    proc = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "scripts", "demo.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"[demo] report: {tmp_path / 'report'}/report.md" in proc.stdout
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert list(results["networks"]) == ["onenet_ed4", "unet4", "onenet_ed4_ctx"]
    assert results["settings"]["jobs"] == 2 and results["settings"]["width"] == 4
    assert results["setup_commands"][0].endswith(f"data demo --out {tmp_path / 'Task00_MNI152Tissue'} --step 4")
    for name, entry in results["networks"].items():
        assert 0.0 <= entry["metrics"]["dice"] <= 1.0, name
        assert os.path.isfile(entry["prediction"]), name
    for png in ("loss_curves", "dice_curves", "class_dice", "overlays"):
        assert (tmp_path / "report" / f"{png}.png").is_file()

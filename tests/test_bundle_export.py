"""onenet-med bundle export: what the zip holds, MONAI's extraction of it, refusals."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import pytest
import torch

from onenet_med.bundle.export import export_bundle
from onenet_med.bundle.record import build_network, task_record, write_task_record
from onenet_med.cli import main
from tests.conftest import REPO_ROOT
from tests.data_trees import CUSTOM_TASK

BUNDLES_DIR = os.path.join(REPO_ROOT, "bundles")


@pytest.fixture
def bundles(tmp_path):
    root = tmp_path / "bundles"
    shutil.copytree(BUNDLES_DIR, root, ignore=shutil.ignore_patterns("models", "output", "eval"))
    return root


def test_zip_holds_the_bundle_and_its_model(bundles, tmp_path, capsys):
    from monai.apps import extractall

    msd = bundles / "onenet_msd"
    net = build_network("onenet_ed4", 2, 3, features=4)
    (msd / "models").mkdir()
    torch.save(net.state_dict(), msd / "models" / "model.pt")
    torch.save({"model": net.state_dict()}, msd / "models" / "latest.pt")
    write_task_record(msd / "models" / "task.json", task_record(CUSTOM_TASK, net, batch_size=4))
    (msd / "output").mkdir()
    (msd / "output" / "metrics.json").write_text("{}")
    assert main(["bundle", "export", "--bundle", str(msd), "--out", str(tmp_path / "dist")]) == 0
    target = tmp_path / "dist" / "onenet_msd_v0.1.0.zip"
    assert capsys.readouterr().out.strip() == str(target)
    names = sorted(zipfile.ZipFile(target).namelist())
    configs = ["evaluate.json", "inference.json", "logging.conf", "metadata.json", "multi_gpu_evaluate.json",
               "multi_gpu_train.json", "train.json"]  # fmt: skip
    expected = [f"onenet_msd/configs/{c}" for c in configs] + ["onenet_msd/LICENSE"]
    expected += ["onenet_msd/docs/README.md", "onenet_msd/docs/data_license.txt", "onenet_msd/docs/usage.md"]
    expected += ["onenet_msd/models/model.pt", "onenet_msd/models/task.json"]  # not latest.pt, not output/
    assert names == sorted(expected)
    out = tmp_path / "extracted"
    extractall(filepath=str(target), output_dir=str(out), has_base=True)  # as monai.bundle download does
    for rel in ("configs/train.json", "configs/inference.json", "LICENSE", "models/model.pt"):
        assert (out / "onenet_msd" / rel).read_bytes() == (msd / rel).read_bytes(), rel
    meta = json.loads((out / "onenet_msd" / "configs" / "metadata.json").read_text())
    data_format = meta["network_data_format"]
    assert data_format["inputs"]["image"]["num_channels"] == 2
    assert data_format["inputs"]["image"]["channel_def"] == {"0": "T1", "1": "T2"}
    assert data_format["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "core", "2": "rim"}
    assert meta["name"] == "onenet_msd"  # the rest unchanged


def test_untrained_bundle_zip_and_refusals(bundles, tmp_path, capsys):
    heart = bundles / "onenet_heart"
    target = export_bundle(heart, tmp_path / "dist")
    archive = zipfile.ZipFile(target)
    assert archive.read("onenet_heart/configs/metadata.json") == (heart / "configs" / "metadata.json").read_bytes()
    assert not [n for n in archive.namelist() if "/models/" in n]
    (heart / "configs" / "train.json").write_text("{}")  # drifted from bundles/common
    with pytest.raises(ValueError, match="train.json: out of date with .*run onenet-med bundle sync"):
        export_bundle(heart, tmp_path / "dist")
    assert main(["bundle", "export", "--bundle", str(heart), "--out", str(tmp_path / "dist")]) == 1
    assert "out of date" in capsys.readouterr().err
    alone = tmp_path / "alone" / "onenet_heart"  # outside a bundles/ tree: no source to compare with
    shutil.copytree(bundles / "onenet_lung", alone)
    (alone / "docs" / "link.md").symlink_to(alone / "docs" / "README.md")
    with pytest.raises(ValueError, match="symbolic links cannot travel in a zip: .*link.md"):
        export_bundle(alone, tmp_path / "dist")
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        export_bundle(tmp_path, tmp_path / "dist")

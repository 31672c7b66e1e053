"""Input and output file names of prediction: folders, MSD dataset.json test lists, output names."""

from __future__ import annotations

import json

import pytest

from onenet_med.bundle import expand_inputs, output_name
from tests.data_trees import make_msd_task


def test_expand_inputs_and_output_names(tmp_path):
    task = make_msd_task(tmp_path / "msd", "heart", n_train=1, n_test=2)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ["b.nii.gz", "a.nii", "c.mha", "d.nrrd", ".a_seg.nii.gz.partial.nii.gz", "notes.txt", "e.json"]:
        (folder / name).write_bytes(b"x")
    files = expand_inputs([folder, task / "dataset.json", tmp_path / "single.nii.gz"])
    assert files == [
        str(folder / "a.nii"),
        str(folder / "b.nii.gz"),
        str(folder / "c.mha"),
        str(folder / "d.nrrd"),
        str(task / "imagesTs" / "case_001.nii.gz"),
        str(task / "imagesTs" / "case_002.nii.gz"),
        str(tmp_path / "single.nii.gz"),
    ]
    (tmp_path / "other.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="not an MSD dataset.json with a 'test' list"):
        expand_inputs(tmp_path / "other.json")
    assert [output_name(f) for f in files[:4]] == ["a_seg.nii", "b_seg.nii.gz", "c_seg.mha", "d_seg.nrrd"]
    assert output_name("x/scan.v2.mhd") == "scan.v2_seg.mha"
    assert output_name("scan.nii.gz", "prob") == "scan_prob.nii.gz"
    assert output_name("scan.nii.gz", "seg", ".json") == "scan_seg.json"

"""Split files: written and read back, malformed ones named, conflicting settings refused, unknown cases named."""

from __future__ import annotations

import json

import pytest

from onenet_med.bundle.split import check_split_settings, read_split, select_split, write_split

POOL = [{"case_id": f"c{i}", "image": f"/d/c{i}.nii.gz"} for i in range(5)]


def test_write_read_select(tmp_path):
    lists = {"train": POOL[:3], "validation": POOL[3:], "test": []}
    write_split(tmp_path / "datalist.json", lists, seed=1, val_fraction=0.4)
    document = read_split(tmp_path / "datalist.json")
    assert document == {"train": ["c0", "c1", "c2"], "validation": ["c3", "c4"], "seed": 1, "val_fraction": 0.4}
    assert select_split(document, list(reversed(POOL)), "f") == {"train": POOL[:3], "validation": POOL[3:]}


@pytest.mark.parametrize(
    "content,message",
    [
        ("{", "not valid JSON"),
        (json.dumps({"train": ["a"]}), "'validation' must be a list of case ids"),
        (json.dumps({"train": "a", "validation": []}), "'train' must be a list of case ids"),
        (json.dumps({"train": [1], "validation": []}), "'train' must be a list of case ids"),
        (json.dumps({"train": ["a", "b"], "validation": ["b"]}), r"\['b'\] are in both"),
    ],
)
def test_malformed_split_files_are_named(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_split(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_split(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "settings,conflict",
    [
        ({"seed": 1, "val_fraction": 0.4}, None),
        ({"seed": None, "val_fraction": None}, None),  # not asked: the file's
        ({"seed": 2, "val_fraction": None}, "--seed"),
        ({"seed": 1, "val_fraction": 0.2}, "--val_fraction"),
    ],
)
def test_conflicting_settings(settings, conflict):
    document = {"train": [], "validation": [], "seed": 1, "val_fraction": 0.4}
    if conflict is None:
        check_split_settings(document, "datalist.json", **settings)
    else:
        with pytest.raises(ValueError, match=f"datalist.json: this run asks for .*Drop {conflict} to evaluate"):
            check_split_settings(document, "datalist.json", **settings)
    check_split_settings({"train": [], "validation": []}, "mine.json", seed=5)  # a split of one's own records none


def test_unknown_case_ids_are_named():
    with pytest.raises(ValueError, match=r"s.json: 2 case id\(s\) not in the dataset: \['x', 'y'\]"):
        select_split({"train": ["c0", "x"], "validation": ["y"]}, POOL, "s.json")

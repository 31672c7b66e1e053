"""Bundles generated from bundles/common: the checkout is in sync, no links, inference.json alone equals the overlay."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from monai.bundle import ConfigParser

from onenet_med.bundle.sync import (
    COPIED,
    STANDALONE,
    bundle_folders,
    format_config,
    generated_files,
    standalone_config,
    sync_bundles,
)
from onenet_med.cli import main
from tests.conftest import REPO_ROOT

BUNDLES_DIR = os.path.join(REPO_ROOT, "bundles")


def test_every_bundle_matches_what_the_generator_writes():
    """Fails when a bundle's shared file drifts from bundles/common: run `onenet-med bundle sync`."""
    assert [b.name for b in bundle_folders(BUNDLES_DIR)] == [
        "onenet_brain", "onenet_demo", "onenet_heart", "onenet_lung", "onenet_msd", "onenet_pets", "onenet_voc",
    ]  # fmt: skip
    assert sync_bundles(BUNDLES_DIR, check=True) == []


def test_no_symbolic_links_under_bundles():
    links = [os.path.join(d, n) for d, dirs, files in os.walk(BUNDLES_DIR) for n in dirs + files
             if os.path.islink(os.path.join(d, n))]  # fmt: skip
    assert links == []


def _parsed(files, **overrides):
    parser = ConfigParser()
    parser.read_config(files)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get()


def test_standalone_inference_equals_train_plus_overlay(tmp_path):
    """Loading train.json + the bundle's inference.json gives what train.json + the common overlay gives, and the
    bundle's inference.json alone refers only to ids it defines."""
    common = os.path.join(BUNDLES_DIR, "common", "configs")
    bundle = os.path.join(BUNDLES_DIR, "onenet_heart", "configs")
    train, overlay = os.path.join(common, "train.json"), os.path.join(common, "inference.json")
    assert _parsed([train, overlay]) == _parsed([train, os.path.join(bundle, "inference.json")])
    alone = json.loads(open(os.path.join(bundle, "inference.json")).read())
    text = json.dumps(alone)
    for ref in set(re.findall(r"@(\w+)", text)) - {"_meta_"}:
        assert ref in alone, ref


def test_standalone_config_closure_and_nested_ids():
    base = {"imports": ["$import os"], "a": 1, "b": "$@a + 1", "c": {"x": "@b"}, "unused": "@a", "seed": 0,
            "initialize": ["$set(@seed)"], "run": ["train"]}  # fmt: skip
    overlay = {"d": "$@c", "c#y": 2, "run": ["infer"], "b": 5}
    out = standalone_config(base, overlay)
    assert list(out) == ["imports", "c", "seed", "initialize", "d", "run", "b"]  # base's order, then the overlay's
    assert out["c"] == {"x": "@b", "y": 2} and base["c"] == {"x": "@b"}  # nested id applied to a copy
    assert out["b"] == 5 and "a" not in out  # the overlay's b needs no a
    with pytest.raises(KeyError, match="'z' is not in the base config"):
        standalone_config(base, {"z#q": 1})


def test_format_config_round_trips():
    config = {"a": [1, 2], "b": {"c": "x" * 130, "d": []}, "e": [{"f": 1}, {"g": "y" * 200}]}
    text = format_config(config)
    assert json.loads(text) == config
    assert '    "a": [1, 2],' in text and text.endswith("}\n")


def test_sync_repairs_drift_links_and_missing_files(tmp_path, capsys):
    root = tmp_path / "bundles"
    shutil.copytree(BUNDLES_DIR, root, symlinks=True)
    heart = root / "onenet_heart" / "configs"
    (heart / "train.json").write_text("{}")
    (heart / "evaluate.json").unlink()
    (heart / "logging.conf").unlink()
    os.symlink("../../common/configs/logging.conf", heart / "logging.conf")
    expected = sorted(str(heart / n) for n in ("train.json", "evaluate.json", "logging.conf"))
    assert sorted(sync_bundles(root, check=True)) == expected
    assert main(["bundle", "sync", "--bundles", str(root), "--check"]) == 1
    assert "out of date: " + str(heart / "train.json") in capsys.readouterr().out
    assert (heart / "train.json").read_text() == "{}"  # --check writes nothing
    assert main(["bundle", "sync", "--bundles", str(root)]) == 0
    assert not (heart / "logging.conf").is_symlink()
    files = generated_files(root / "common")
    assert set(files) == {*COPIED, *STANDALONE}
    for rel, content in files.items():
        assert (root / "onenet_heart" / rel).read_bytes() == content, rel
    assert main(["bundle", "sync", "--bundles", str(root), "--check"]) == 0
    # a change to the source reaches every bundle
    (root / "common" / "configs" / "logging.conf").write_text("changed\n")
    assert len(sync_bundles(root)) == len(bundle_folders(root))
    assert (root / "onenet_msd" / "configs" / "logging.conf").read_text() == "changed\n"

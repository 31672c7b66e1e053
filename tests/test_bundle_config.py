"""load_bundle_config: inference.json alone, the bundle root, a checkpoint, overrides meant for training."""

from __future__ import annotations

import pytest

from onenet_med.bundle import load_bundle_config
from tests.inference_helpers import BUNDLES


def test_reads_inference_json_alone_with_overrides(tmp_path):
    parser = load_bundle_config(BUNDLES / "onenet_heart", {"network_def#features": 8}, checkpoint=tmp_path / "m.pt")
    assert parser.get_parsed_content("bundle_root") == str((BUNDLES / "onenet_heart").resolve())
    assert parser.get_parsed_content("ckpt_path") == str(tmp_path / "m.pt")
    assert parser.get_parsed_content("network_def").stem[0].out_channels == 8
    assert "train" not in parser.get()


def test_training_settings_are_left_out_and_unknown_ones_named():
    training = {"max_epochs": 3, "train#dataloader#drop_last": True, "learning_rate": 0.1, "network_name": "unet4"}
    parser = load_bundle_config(BUNDLES / "onenet_heart", training)  # one set of overrides for train and predict
    assert parser.get_parsed_content("network_name") == "unet4" and "max_epochs" not in parser.get()
    with pytest.raises(KeyError, match="'netwrok_name' is not a setting of .*inference.json"):
        load_bundle_config(BUNDLES / "onenet_heart", {"netwrok_name": "unet4"})

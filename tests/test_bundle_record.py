"""The task saved with a model: network arguments remembered, applied back, written by rank 0, errors named."""

from __future__ import annotations

import json

import pytest
import torch

from onenet_med.bundle import record
from onenet_med.data import get_task
from tests.data_trees import CUSTOM_TASK


def test_build_network_remembers_its_arguments_and_uses_the_trained_ones():
    net = record.build_network("onenet_ed4", 2, 3, features=4)
    assert record.network_arguments(net) == {
        "name": "onenet_ed4",
        "in_channels": 2,
        "out_channels": 3,
        "kwargs": {"features": 4},
    }
    saved = {"network": {"name": "onenet_ed4", "kwargs": {"features": 4, "spatial_kernel": 9}}}
    rebuilt = record.build_network("onenet_ed4", 2, 3, trained=saved)
    assert record.network_arguments(rebuilt)["kwargs"] == {"features": 4, "spatial_kernel": 9}
    rebuilt.load_state_dict(record.build_network("onenet_ed4_s", 2, 3, features=4).state_dict())  # strict: the -S net
    explicit = record.build_network("onenet_ed4", 2, 3, trained=saved, features=8)  # the command line wins
    assert record.network_arguments(explicit)["kwargs"] == {"features": 8, "spatial_kernel": 9}
    other = record.build_network("unet4", 2, 3, trained=saved)  # another network: the saved arguments do not apply
    assert record.network_arguments(other)["kwargs"] == {}
    ddp_like = torch.nn.DataParallel(net)
    assert record.network_arguments(ddp_like)["name"] == "onenet_ed4"
    assert record.network_arguments(torch.nn.Conv2d(1, 1, 1)) is None


def test_record_round_trip(tmp_path):
    net = record.build_network("unet4", 2, 3, features=8)
    rec = record.task_record(CUSTOM_TASK, net, spatial_size=[48, 64], batch_size=6)
    path = record.write_task_record(tmp_path / "models" / record.TASK_RECORD, rec)
    loaded = record.read_task_record(tmp_path / "models" / "model.pt")
    assert path == str(tmp_path / "models" / "task.json")
    assert loaded["task_spec"] == CUSTOM_TASK.replace(network="unet4", spatial_size=(48, 64), batch_size=6)
    assert loaded["network"] == {"name": "unet4", "in_channels": 2, "out_channels": 3, "kwargs": {"features": 8}}
    assert record.read_task_record(tmp_path / "elsewhere" / "model.pt") is None
    assert record.read_task_record(None) is None
    with pytest.raises(ValueError, match="not built by onenet_med.bundle.record.build_network"):
        record.task_record(CUSTOM_TASK, torch.nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize(
    "content,message",
    [
        ("not json", "Expecting value"),
        (json.dumps({"format": 7}), "format 7"),
        (json.dumps({"format": 1, "task": {"name": "x"}, "network": {"kwargs": {}}}), "missing"),
        (json.dumps({"format": 1, "task": get_task("heart").to_dict(), "network": {}}), "no network arguments"),
    ],
)
def test_bad_record_is_named(tmp_path, content, message):
    (tmp_path / "task.json").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        record.read_task_record(tmp_path / "model.pt")
    assert str(tmp_path / "task.json") in str(error.value) and "not a task record" in str(error.value)


@pytest.mark.parametrize("main,written", [(True, True), (False, False)])
def test_saver_writes_on_rank_zero_only(tmp_path, monkeypatch, main, written):
    from ignite.engine import Engine

    from onenet_med.bundle import workflow

    monkeypatch.setattr(workflow, "is_main_process", lambda: main)
    net = record.build_network("onenet_ed4", 1, 2, features=4)
    saver = record.TaskRecordSaver(tmp_path / "models", get_task("heart"), net, spatial_size=None, batch_size=8)
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "models" / "task.json").is_file() is written

"""Checkpoint I/O, RNG states, best-model saving and resume equivalence with a MONAI SupervisedTrainer."""

from __future__ import annotations

import argparse
import os
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism
from torch import nn

from onenet_med.engine import (
    BestCheckpointSaver,
    BNStatsRefresh,
    CheckpointResumer,
    LatestCheckpointSaver,
    RNGState,
    get_loss,
    get_lr_scheduler,
    load_checkpoint,
    save_checkpoint,
)
from onenet_med.metrics import SegmentationMetrics


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model(torch.randn(2, 1, 3, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.pt", {"model": model, "optimizer": optimizer})
    other = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    other_opt = torch.optim.Adam(other.parameters(), 1e-3)
    load_checkpoint(tmp_path / "c.pt", {"model": other, "optimizer": other_opt})
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert other_opt.state_dict()["state"][0]["step"] == 1
    # a bare state_dict (model.pt) loads into a single object
    torch.save(model.state_dict(), tmp_path / "model.pt")
    load_checkpoint(tmp_path / "model.pt", {"model": other})


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    # weights_only=True: arbitrary pickled objects are refused
    torch.save({"model": {}, "hook": argparse.Namespace(a=1)}, tmp_path / "pickle.pt")
    with pytest.raises(RuntimeError, match="pickle.pt"):
        load_checkpoint(tmp_path / "pickle.pt")
    save_checkpoint(tmp_path / "c.pt", {"model": nn.Linear(1, 1)})
    with pytest.raises(KeyError, match=r"no entries \['optimizer'\]"):
        load_checkpoint(tmp_path / "c.pt", {"model": nn.Linear(1, 1), "optimizer": nn.Linear(1, 1)})


def test_rng_state_round_trip(tmp_path):
    flip = RandFlipd(keys="image", prob=0.5)
    pipeline = Compose([flip, RandGaussianNoised(keys="image", prob=1.0)])
    pipeline.set_random_state(3)
    rng = RNGState(Dataset([], transform=pipeline))
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng})

    def draw():
        return (random.random(), np.random.rand(), torch.rand(1).item(), flip.R.rand(), pipeline.transforms[1].R.rand())

    first = draw()
    load_checkpoint(tmp_path / "rng.pt", {"rng": rng})
    assert draw() == first
    with pytest.raises(ValueError, match="random states of 4 random transforms but the current pipeline has 2"):
        load_checkpoint(tmp_path / "rng.pt", {"rng": RNGState(Compose([flip]))})


def test_best_checkpoint_saver(tmp_path):
    model = nn.Linear(1, 1)
    saver = BestCheckpointSaver(tmp_path, model, "val_dice")
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    values = iter([0.5, 0.7, float("nan"), 0.6])
    saved_weights = []

    @engine.on(Events.COMPLETED)
    def _(_):  # registered after the saver: runs after it
        saved_weights.append(load_checkpoint(tmp_path / "model.pt")["weight"].clone())

    @engine.on(Events.STARTED)
    def set_metric(e):
        with torch.no_grad():
            model.weight.add_(1.0)
        e.state.metrics["val_dice"] = next(values)

    weights = []
    for _ in range(4):
        engine.run([0], max_epochs=1)
        weights.append(model.weight.detach().clone())
    assert saver.best_value == 0.7
    assert torch.equal(saved_weights[-1], weights[1])  # the file holds the epoch with 0.7
    assert torch.equal(saved_weights[0], weights[0])
    restored = BestCheckpointSaver(tmp_path, model, "val_dice")
    restored.load_state_dict(saver.state_dict())
    assert restored.best_value == 0.7


# ---- resume equivalence ---------------------------------------------------------------------------------------------

K = 3


def make_data() -> list[dict]:
    gen = torch.Generator().manual_seed(123)
    data = []
    for _ in range(8):
        label = torch.randint(0, K, (1, 6, 6), generator=gen)
        image = label.float() + 0.5 * torch.randn(1, 6, 6, generator=gen)
        data.append({"image": image.repeat(2, 1, 1), "label": label})
    return data


def build_trainer(ckpt_dir, max_epochs: int, resume: bool, save_transform_states: bool = True) -> SupervisedTrainer:
    """Tiny Conv->ReLU->BN net, shuffled loader with random flips and noise, Adam, step lr, validation with a
    BatchNorm refresh (which draws from the training loader) and best-model saving."""
    set_determinism(seed=0)
    net = nn.Sequential(nn.Conv2d(2, 8, 1), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, K, 1))
    transforms = Compose(
        [
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
            RandGaussianNoised(keys="image", prob=0.5, std=0.1),
        ]
    )
    train_loader = DataLoader(Dataset(make_data(), transforms), batch_size=3, shuffle=True, num_workers=0)
    val_loader = DataLoader(Dataset(make_data()[:4]), batch_size=2)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    # the schedule is planned for the whole training (3 epochs: decays after epochs 1 and 2), interrupted or not
    scheduler = get_lr_scheduler(optimizer, "paper", max_epochs=3, first_milestone=1, step_size=1)
    best = BestCheckpointSaver(ckpt_dir, net, "val_dice")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val_loader,
        network=net,
        key_val_metric={"val_dice": SegmentationMetrics(K, key="dice")},
        val_handlers=[BNStatsRefresh(net, train_loader, num_batches=2), best],
    )
    objects = {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler, "best": best}
    rng_transforms = transforms if save_transform_states else None
    handlers = [
        # attached first on purpose: the saver moves itself after the lr step and the validation
        LatestCheckpointSaver(ckpt_dir, objects, transforms=rng_transforms),
        LrScheduleHandler(scheduler, print_lr=False),
        ValidationHandler(validator=evaluator, interval=1),
    ]
    if resume:
        handlers.append(CheckpointResumer(ckpt_dir, objects, transforms=rng_transforms))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=net,
        optimizer=optimizer,
        loss_function=get_loss(K),
        train_handlers=handlers,
    )
    trainer.net, trainer.best = net, best
    return trainer


def max_state_difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        (x.double() - y.double()).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )


def test_one_epoch_plus_resume_equals_two_epochs(tmp_path):
    try:
        straight = build_trainer(tmp_path / "straight", max_epochs=2, resume=False)
        straight.run()
        first = build_trainer(tmp_path / "split", max_epochs=1, resume=False)
        first.run()
        assert max_state_difference(first.net, straight.net) > 1e-3  # one epoch is not two
        resumed = build_trainer(tmp_path / "split", max_epochs=2, resume=True)
        executed = []
        resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: executed.append(e.state.iteration))
        resumed.run()
        assert executed == [4, 5, 6]  # only the second epoch ran: the first came from the checkpoint
        assert resumed.state.epoch == 2 and resumed.state.iteration == straight.state.iteration == 6
        assert max_state_difference(resumed.net, straight.net) <= 1e-6
        assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"] == 1e-4
        assert resumed.best.best_value == straight.best.best_value
        best_straight = load_checkpoint(tmp_path / "straight" / "model.pt")
        best_split = load_checkpoint(tmp_path / "split" / "model.pt")
        assert all(torch.equal(best_straight[k], best_split[k]) for k in best_straight)
        latest = load_checkpoint(tmp_path / "split" / "latest.pt")
        assert latest["trainer"]["iteration"] == 6 and latest["lr_scheduler"]["last_epoch"] == 2

        # control: without the random transforms' states the resumed run augments differently
        build_trainer(tmp_path / "control", max_epochs=1, resume=False, save_transform_states=False).run()
        control = build_trainer(tmp_path / "control", max_epochs=2, resume=True, save_transform_states=False)
        control.run()
        assert max_state_difference(control.net, straight.net) > 1e-4
    finally:
        set_determinism(seed=None)


def test_resume_errors(tmp_path):
    try:
        with pytest.raises(FileNotFoundError, match="cannot resume"):
            build_trainer(tmp_path / "empty", max_epochs=1, resume=True).run()
        trainer = build_trainer(tmp_path / "fresh", max_epochs=1, resume=False)
        resumer = CheckpointResumer(tmp_path / "fresh", {"model": trainer.net}, missing_ok=True)
        resumer.attach(trainer)
        trainer.run()
        assert resumer.resumed_epoch is None and os.path.isfile(tmp_path / "fresh" / "latest.pt")
        build_trainer(tmp_path / "two", max_epochs=2, resume=False).run()
        with pytest.raises(ValueError, match="beyond max_epochs=1"):
            build_trainer(tmp_path / "two", max_epochs=1, resume=True).run()
    finally:
        set_determinism(seed=None)


@pytest.mark.parametrize(
    "enabled, attached", [("false", False), ("False", False), (0, False), ("0", False), ("true", True), (1, True)]
)
def test_resumer_enabled_is_a_switch(tmp_path, enabled, attached):
    """``enabled="false"`` (a command-line value) must not resume; ``bool("false")`` would."""
    engine = Engine(lambda e, b: None)
    CheckpointResumer(tmp_path, {"model": torch.nn.Linear(1, 1)}, enabled=enabled).attach(engine)
    if attached:  # no latest.pt in the folder: resuming must fail
        with pytest.raises(FileNotFoundError, match="cannot resume"):
            engine.run([0], max_epochs=1)
    else:
        engine.run([0], max_epochs=1)
        assert engine.state.iteration == 1


def test_resumer_rejects_other_values(tmp_path):
    with pytest.raises(ValueError, match="switch 'enabled'.*got 'yes'"):
        CheckpointResumer(tmp_path, {}, enabled="yes")


def bundle_config(ckpt_dir, max_epochs: int, resume: bool) -> dict:
    """A train.json-like config wiring every factory and handler of the engine and metrics packages."""
    return {
        "imports": ["$import torch", "$import monai"],
        "ckpt_dir": str(ckpt_dir),
        "resume": resume,
        "num_classes": K,
        "max_epochs": max_epochs,
        "network": {"_target_": "torch.nn.Conv2d", "in_channels": 2, "out_channels": K, "kernel_size": 1},
        "loss": {"_target_": "onenet_med.engine.get_loss", "num_classes": "@num_classes"},
        "optimizer": {"_target_": "onenet_med.engine.get_optimizer", "params": "$@network.parameters()"},
        "lr_scheduler": {
            "_target_": "onenet_med.engine.get_lr_scheduler",
            "optimizer": "@optimizer",
            "name": "cosine",
            "max_epochs": 3,
        },
        "checkpoint_objects": {
            "model": "@network",
            "optimizer": "@optimizer",
            "lr_scheduler": "@lr_scheduler",
            "best": "@validate#handlers#1",
        },
        "train": {
            "dataset": {
                "_target_": "Dataset",
                "data": "$[{'image': torch.rand(2, 6, 6), 'label': torch.randint(0, 3, (1, 6, 6))} for _ in range(6)]",
            },
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 3, "shuffle": True},
            "handlers": [
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "interval": 1},
                {
                    "_target_": "onenet_med.engine.CheckpointResumer",
                    "ckpt_dir": "@ckpt_dir",
                    "load_dict": "@checkpoint_objects",
                    "enabled": "@resume",
                },
                {
                    "_target_": "onenet_med.engine.LatestCheckpointSaver",
                    "ckpt_dir": "@ckpt_dir",
                    "save_dict": "@checkpoint_objects",
                },
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "device": "$torch.device('cpu')",
                "max_epochs": "@max_epochs",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "optimizer": "@optimizer",
                "loss_function": "@loss",
                "train_handlers": "@train#handlers",
            },
        },
        "validate": {
            "handlers": [
                {
                    "_target_": "onenet_med.engine.BNStatsRefresh",
                    "model": "@network",
                    "loader": "@train#dataloader",
                    "num_batches": 1,
                },
                {
                    "_target_": "onenet_med.engine.BestCheckpointSaver",
                    "ckpt_dir": "@ckpt_dir",
                    "model": "@network",
                    "metric_name": "val_dice",
                },
            ],
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "$torch.device('cpu')",
                "val_data_loader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 3},
                "network": "@network",
                "key_val_metric": {
                    "val_dice": {
                        "_target_": "onenet_med.metrics.SegmentationMetrics",
                        "num_classes": "@num_classes",
                        "key": "dice",
                    }
                },
                "additional_metrics": {
                    "val": {"_target_": "onenet_med.metrics.SegmentationMetrics", "num_classes": "@num_classes"}
                },
                "val_handlers": "@validate#handlers",
            },
        },
    }


def test_bundle_config_wiring(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser(bundle_config(tmp_path, max_epochs=1, resume=False))
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert {"val_dice", "ce", "dice", "miou", "map50", "dice_class1"} <= set(evaluator.state.metrics)
    assert os.path.isfile(tmp_path / "latest.pt") and os.path.isfile(tmp_path / "model.pt")

    parser = ConfigParser(bundle_config(tmp_path, max_epochs=2, resume=True))
    trainer = parser.get_parsed_content("train#trainer")
    executed = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: executed.append(e.state.iteration))
    trainer.run()
    assert executed == [3, 4] and trainer.state.epoch == 2
    assert load_checkpoint(tmp_path / "latest.pt")["trainer"]["iteration"] == 4


def test_bundle_checkpoint_loader_names_the_file(tmp_path):
    """Weights of another network fail naming the file and what does not fit; fitting weights load."""
    from onenet_med.engine import BundleCheckpointLoader, describe_state_mismatch

    ours, other = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1)), nn.Sequential(nn.Conv2d(1, 4, 3))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    torch.save(ours.state_dict(), tmp_path / "ours.pt")
    assert describe_state_mismatch(ours, other.state_dict()) == (
        "2 missing keys (first: 1.weight), 1 shape mismatch (first: 0.weight: checkpoint (4, 1, 3, 3), "
        "network (4, 1, 1, 1))"
    )
    assert describe_state_mismatch(ours, ours.state_dict()) == ""
    engine = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path / 'other.pt'} does not fit the network Sequential"):
        BundleCheckpointLoader(str(tmp_path / "other.pt"), {"model": ours})(engine)
    record = tmp_path / "task.json"
    with pytest.raises(ValueError, match=rf"no {record} beside it records them"):  # where the settings would be
        BundleCheckpointLoader(str(tmp_path / "other.pt"), {"model": ours})(engine)
    record.write_text("{}")
    with pytest.raises(ValueError) as error:
        BundleCheckpointLoader(str(tmp_path / "other.pt"), {"model": ours})(engine)
    assert "task.json" not in str(error.value)
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {tmp_path / 'none.pt'} does not exist"):
        BundleCheckpointLoader(str(tmp_path / "none.pt"), {"model": ours})(engine)
    fresh = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1))
    BundleCheckpointLoader(str(tmp_path / "ours.pt"), {"model": fresh})(engine)
    torch.testing.assert_close(fresh.state_dict(), torch.load(tmp_path / "ours.pt", weights_only=True))

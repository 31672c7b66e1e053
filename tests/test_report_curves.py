import math

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from onenet_med.report import epoch_length_from_checkpoint, read_run_curves, read_scalars


def _write(log_dir, scalars, wall=None):
    """scalars: {tag: [(step, value), ...]}; wall: {step: wall_time} for train_loss."""
    writer = SummaryWriter(log_dir=str(log_dir))
    for tag, points in scalars.items():
        for step, value in points:
            kw = {"walltime": wall[step]} if wall and tag == "train_loss" else {}
            writer.add_scalar(tag, value, step, **kw)
    writer.close()


def test_train_loss_grouped_into_epochs_and_validation_kept(tmp_path):
    losses = [(i, float(v)) for i, v in enumerate([6, 4, 2, 3, 3, 3, 1, 0.5, 0.0], start=1)]
    wall = {1: 100.0, 2: 101.0, 3: 102.5, 4: 110.0, 5: 111.0, 6: 112.0, 7: 120.0, 8: 121.5, 9: 123.0}
    _write(tmp_path / "output", {"train_loss": losses}, wall)
    _write(tmp_path / "output", {"dice": [(1, 0.5), (3, 0.8)], "dice_grey matter": [(3, 0.9)], "ce": [(1, 1.0)]})
    curves = read_run_curves(tmp_path / "output", epoch_length=3)
    assert curves.train_loss == [(1, 4.0), (2, 3.0), (3, 0.5)]  # means of (6, 4, 2), (3, 3, 3), (1, .5, 0)
    assert curves.validation["dice"] == [(1, 0.5), (3, pytest.approx(0.8))]
    assert curves.validation["dice_grey matter"] == [(3, pytest.approx(0.9))]
    assert "train_loss" not in curves.validation
    assert curves.iterations == 9 and curves.epoch_length == 3
    # gaps inside epochs: 1, 1.5, 1, 1, 1.5, 1.5 (the 7.5 s and 8 s across epoch ends are left out) -> median 1.25
    assert curves.seconds_per_iteration == pytest.approx(1.25, abs=1e-3)
    assert curves.best("dice") == (3, pytest.approx(0.8))
    assert curves.best("missing") is None


def test_epoch_length_from_the_bundles_latest_checkpoint(tmp_path):
    _write(tmp_path / "run" / "output", {"train_loss": [(i, float(i)) for i in range(1, 5)]})
    (tmp_path / "run" / "models").mkdir()
    torch.save({"trainer": {"epoch_length": 2, "iteration": 4, "max_epochs": 2}}, tmp_path / "run/models/latest.pt")
    assert epoch_length_from_checkpoint(tmp_path / "run/models/latest.pt") == 2
    assert epoch_length_from_checkpoint(tmp_path / "nothing.pt") is None
    curves = read_run_curves(tmp_path / "run" / "output")  # finds ../models/latest.pt
    assert curves.train_loss == [(1, 1.5), (2, 3.5)]


def test_without_epoch_length_every_iteration_is_a_point(tmp_path):
    _write(tmp_path, {"train_loss": [(1, 2.0), (2, 1.0)]})
    assert read_run_curves(tmp_path, ckpt_dir=tmp_path / "none").train_loss == [(1, 2.0), (2, 1.0)]
    with pytest.raises(ValueError, match="epoch_length"):
        read_run_curves(tmp_path, epoch_length=0)


def test_resumed_run_last_written_value_wins_and_missing_logs_are_named(tmp_path):
    _write(tmp_path, {"dice": [(1, 0.1), (2, 0.2)]})
    _write(tmp_path, {"dice": [(2, 0.7), (3, 0.9)]})  # a second event file, written later
    dice = read_scalars(tmp_path)["dice"]
    assert [s for s, _ in dice] == [1, 2, 3] and dice[1][1] == pytest.approx(0.7)
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")


def test_nan_validation_values_are_kept_but_never_best(tmp_path):
    _write(tmp_path, {"dice_csf": [(1, float("nan")), (2, 0.4)]})
    curves = read_run_curves(tmp_path, epoch_length=1)
    assert math.isnan(curves.validation["dice_csf"][0][1])
    assert curves.best("dice_csf") == (2, pytest.approx(0.4))

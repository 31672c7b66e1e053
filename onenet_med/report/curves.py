"""Training curves of a bundle run, read back from what the bundle already writes.

The bundles' ``TensorBoardStatsHandler`` s write the training loss once per iteration (tag ``train_loss``, step =
iteration) and every validation metric once per validation (tags ``dice``, ``ce``, ``dice_<class>``, ..., step =
epoch) into ``output_dir``; ``models/latest.pt`` holds the trainer state (``epoch_length``). This module turns
them into per-epoch curves for plots and reports; nothing extra has to be logged during training.
"""

from __future__ import annotations

import glob
import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["TRAIN_LOSS_TAG", "RunCurves", "epoch_length_from_checkpoint", "read_run_curves", "read_scalars"]

TRAIN_LOSS_TAG = "train_loss"


@dataclass
class RunCurves:
    """Per-epoch curves of one training run.

    Attributes:
        train_loss: ``[(epoch, mean training loss of the epoch's iterations), ...]``, epochs from 1.
        validation: ``{metric: [(epoch, value), ...]}`` for every validation metric (``dice``, ``ce``,
            ``dice_<class>``, ``volume_dice``, ...), at the validated epochs.
        epoch_length: iterations per epoch used to group the iteration losses.
        iterations: training iterations logged.
        seconds_per_iteration: median wall time of a training iteration (from the event times; validation, epoch
            ends and checkpoints excluded), or None.
    """

    train_loss: list[tuple[int, float]] = field(default_factory=list)
    validation: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    epoch_length: int = 1
    iterations: int = 0
    seconds_per_iteration: float | None = None

    def best(self, metric: str = "dice") -> tuple[int, float] | None:
        """(epoch, value) of the highest finite validation value of ``metric``, or None when never validated."""
        points = [(e, v) for e, v in self.validation.get(metric, []) if math.isfinite(v)]
        return max(points, key=lambda p: p[1]) if points else None


def _read_events(log_dir: str | os.PathLike) -> dict[str, dict[int, tuple[float, float]]]:
    """``{tag: {step: (wall_time, value)}}`` of every scalar in the event files of ``log_dir`` (last write wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(os.path.join(os.fspath(log_dir), "events.out.tfevents.*")), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"{os.fspath(log_dir)}: no TensorBoard event files (was the run's output_dir here?)")
    series: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for path in files:
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                old = series[tag].get(event.step)
                if old is None or event.wall_time >= old[0]:
                    series[tag][event.step] = (event.wall_time, float(event.value))
    return series


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of the TensorBoard event files in ``log_dir`` (not recursive), sorted by step.

    When several files hold the same tag and step (a resumed run), the value written last wins.

    Raises:
        FileNotFoundError: no event file in ``log_dir``.
    """
    return {tag: sorted((step, v) for step, (_, v) in points.items()) for tag, points in _read_events(log_dir).items()}


def _seconds_per_iteration(points: dict[int, tuple[float, float]], epoch_length: int) -> float | None:
    """Median wall time between consecutive iterations of the same epoch (validation and epoch ends excluded)."""
    gaps = [
        points[step + 1][0] - points[step][0]
        for step in points
        if step + 1 in points and (step - 1) // epoch_length == step // epoch_length
    ]
    return statistics.median(gaps) if gaps else None


def epoch_length_from_checkpoint(path: str | os.PathLike) -> int | None:
    """``epoch_length`` of the trainer state saved in a bundle's ``latest.pt`` (None when absent)."""
    if not os.path.isfile(path):
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True).get("trainer") or {}
    length = state.get("epoch_length")
    return int(length) if length else None


def read_run_curves(
    output_dir: str | os.PathLike, epoch_length: int | None = None, ckpt_dir: str | os.PathLike | None = None
) -> RunCurves:
    """Per-epoch curves of the bundle run that wrote its TensorBoard files into ``output_dir``.

    Args:
        output_dir: the run's ``output_dir`` (TensorBoard event files).
        epoch_length: iterations per epoch; default: from ``<ckpt_dir>/latest.pt``, else 1 (one point per
            iteration).
        ckpt_dir: the run's ``ckpt_dir`` (default: ``<output_dir>/../models``, the bundle layout).

    Returns:
        a :class:`RunCurves`; epoch ``e`` averages the losses of iterations ``(e - 1) * L + 1 .. e * L``; the
        validation series keep every other tag.
    """
    events = _read_events(output_dir)
    if epoch_length is None:
        ckpt_dir = ckpt_dir if ckpt_dir is not None else os.path.join(os.fspath(output_dir), os.pardir, "models")
        epoch_length = epoch_length_from_checkpoint(os.path.join(ckpt_dir, "latest.pt")) or 1
    if epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
    losses = events.pop(TRAIN_LOSS_TAG, {})
    sums: dict[int, list[float]] = defaultdict(list)
    for step, (_, value) in sorted(losses.items()):
        sums[(step - 1) // epoch_length + 1].append(value)
    return RunCurves(
        train_loss=[(epoch, sum(v) / len(v)) for epoch, v in sorted(sums.items())],
        validation={tag: sorted((step, v) for step, (_, v) in points.items()) for tag, points in events.items()},
        epoch_length=int(epoch_length),
        iterations=len(losses),
        seconds_per_iteration=_seconds_per_iteration(losses, epoch_length),
    )

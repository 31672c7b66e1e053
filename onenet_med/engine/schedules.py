"""Learning-rate schedules as factories usable from JSON configs (stepped once per epoch).

``"paper"``: lr x ``gamma`` (0.1) every ``step_size`` (20) epochs from epoch ``first_milestone`` (50): milestones
50, 70, 90, ... below ``max_epochs`` (SPEC §6). ``"cosine"``: cosine decay from the initial lr to ``eta_min`` over
``max_epochs`` (SPEC §6a found lr 1e-3 + cosine better than the paper's 1e-4 on short CPU budgets).
``"constant"``: no change.

Epochs are counted from 0 as the number of completed scheduler steps: with the paper's schedule the lr of epoch
49 is the initial lr and that of epoch 50 is a tenth of it. Use with MONAI's ``LrScheduleHandler`` (``epoch_level``
true, the default), e.g.::

    "lr_scheduler": {"_target_": "onenet_med.engine.get_lr_scheduler", "optimizer": "@optimizer",
                     "name": "paper", "max_epochs": "@max_epochs"}
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, MultiStepLR

__all__ = ["SCHEDULES", "get_lr_scheduler", "paper_milestones"]

SCHEDULES = ("paper", "cosine", "constant")


def paper_milestones(max_epochs: int, first_milestone: int = 50, step_size: int = 20) -> list[int]:
    """Epochs at which the paper's schedule multiplies the lr by gamma: first, first+step, ... below max_epochs."""
    if first_milestone < 1 or step_size < 1:
        raise ValueError(f"first_milestone and step_size must be >= 1, got {first_milestone}, {step_size}")
    return list(range(int(first_milestone), int(max_epochs), int(step_size)))


def _constant(_: int) -> float:
    return 1.0


def get_lr_scheduler(
    optimizer: Optimizer,
    name: str = "paper",
    max_epochs: int = 300,
    first_milestone: int = 50,
    step_size: int = 20,
    gamma: float = 0.1,
    eta_min: float = 0.0,
) -> LRScheduler:
    """Build an epoch-level lr scheduler.

    Args:
        optimizer: the optimizer whose lr is scheduled.
        name: ``"paper"`` (MultiStepLR at :func:`paper_milestones`), ``"cosine"`` (CosineAnnealingLR with
            ``T_max=max_epochs``) or ``"constant"``.
        max_epochs: total training epochs.
        first_milestone: first decay epoch of the paper's schedule.
        step_size: epochs between decays of the paper's schedule.
        gamma: decay factor of the paper's schedule.
        eta_min: final lr of the cosine schedule.
    """
    if name == "paper":
        return MultiStepLR(optimizer, milestones=paper_milestones(max_epochs, first_milestone, step_size), gamma=gamma)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(int(max_epochs), 1), eta_min=eta_min)
    if name == "constant":
        return LambdaLR(optimizer, _constant)
    raise ValueError(f"unknown lr schedule {name!r}; choose one of {SCHEDULES}")

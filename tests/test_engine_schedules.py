"""The paper's lr schedule (x0.1 every 20 epochs from epoch 50) and the cosine / constant options."""

from __future__ import annotations

import math

import pytest
import torch

from onenet_med.engine import get_lr_scheduler, get_optimizer, paper_milestones


def lr_by_epoch(name: str, max_epochs: int, **kwargs) -> list[float]:
    """lr used in each epoch 0..max_epochs-1 when the scheduler steps once per epoch."""
    optimizer = get_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", learning_rate=1e-4)
    scheduler = get_lr_scheduler(optimizer, name, max_epochs=max_epochs, **kwargs)
    lrs = []
    for _ in range(max_epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(
    "epoch,expected", [(0, 1e-4), (49, 1e-4), (50, 1e-5), (69, 1e-5), (70, 1e-6), (89, 1e-6), (90, 1e-7), (299, 1e-17)]
)
def test_paper_schedule(epoch, expected):
    assert lr_by_epoch("paper", 300)[epoch] == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize(
    "max_epochs,first,step,expected",
    [(300, 50, 20, list(range(50, 300, 20))), (100, 50, 20, [50, 70, 90]), (50, 50, 20, []), (10, 2, 3, [2, 5, 8])],
)
def test_paper_milestones(max_epochs, first, step, expected):
    assert paper_milestones(max_epochs, first, step) == expected


def test_cosine_and_constant():
    lrs = lr_by_epoch("cosine", 10, eta_min=1e-6)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5] == pytest.approx(1e-6 + (1e-4 - 1e-6) * (1 + math.cos(math.pi * 5 / 10)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lr_by_epoch("constant", 5) == pytest.approx([1e-4] * 5)


def test_factory_errors():
    optimizer = get_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-4
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        get_lr_scheduler(optimizer, "step")
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        get_optimizer([torch.nn.Parameter(torch.zeros(1))], "lion")
    assert isinstance(get_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd"), torch.optim.SGD)

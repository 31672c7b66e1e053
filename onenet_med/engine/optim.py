"""Optimiser factory usable from JSON configs (the paper: Adam, lr 1e-4)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["OPTIMIZERS", "get_optimizer"]

OPTIMIZERS = ("adam", "adamw", "sgd")


def get_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    name: str = "adam",
    learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build an optimiser.

    Args:
        params: parameters (e.g. ``"$@network.parameters()"``) or parameter groups.
        name: ``"adam"`` (the paper's), ``"adamw"`` or ``"sgd"`` (momentum 0.9 unless given).
        learning_rate: initial lr (the paper: 1e-4; SPEC §6a found 1e-3 better on short CPU budgets).
        weight_decay: L2 penalty (decoupled for AdamW).
        kwargs: passed to the optimiser.
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, **kwargs)
    if name == "sgd":
        kwargs.setdefault("momentum", 0.9)
        return torch.optim.SGD(params, lr=learning_rate, weight_decay=weight_decay, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")

"""Loss factory: cross-entropy with a reduced background weight and void pixels ignored (SPEC §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "WeightedCrossEntropyLoss", "class_weights", "get_loss", "prepare_label"]

# void label (VOC borders); the data package defines the same constant (onenet_med/data/tasks.py)
IGNORE_INDEX = 255


def class_weights(num_classes: int, background_weight: float = 0.25) -> torch.Tensor:
    """Per-class cross-entropy weights ``[background_weight, 1, ..., 1]``.

    Args:
        num_classes: number of classes K including background (K >= 2).
        background_weight: weight of class 0 (the paper: a quarter).

    Returns:
        float32 tensor of shape (K,).
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    if not background_weight >= 0:
        raise ValueError(f"background_weight must be >= 0, got {background_weight}")
    weights = torch.ones(int(num_classes), dtype=torch.float32)
    weights[0] = float(background_weight)
    return weights


def prepare_label(label: torch.Tensor, logits_ndim: int) -> torch.Tensor:
    """Turn a label map with one channel into the int64 index map that ``F.cross_entropy`` expects.

    Args:
        label: (B, 1, H, W[, D]) or already (B, H, W[, D]); integer or float values (0..K-1, or the void index).
        logits_ndim: number of dimensions of the matching logits (B, K, H, W[, D]).

    Returns:
        int64 tensor (B, H, W[, D]), a plain ``torch.Tensor`` (MONAI MetaTensor metadata dropped).
    """
    label = label.as_tensor() if hasattr(label, "as_tensor") else label
    if label.ndim == logits_ndim:
        if label.shape[1] != 1:
            raise ValueError(
                f"label must have one channel holding class indices, got shape {tuple(label.shape)} "
                "(one-hot labels are not supported: use the integer label map)"
            )
        label = label[:, 0]
    elif label.ndim != logits_ndim - 1:
        raise ValueError(f"label of shape {tuple(label.shape)} does not match logits with {logits_ndim} dimensions")
    if label.is_floating_point():
        label = label.round()
    return label.long()


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy over logits with per-class weights and an ignored (void) label.

    ``reduction="mean"`` is PyTorch's weighted mean ``sum_i w[y_i] * l_i / sum_i w[y_i]`` over non-void pixels,
    the same quantity the CE metric accumulates over a whole dataset.

    Args:
        weight: (K,) class weights.
        ignore_index: label value that contributes nothing (void).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(self, weight: torch.Tensor, ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.ignore_index = int(ignore_index)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: (B, K, H, W) or (B, K, H, W, D) raw network outputs.
            label: (B, 1, H, W[, D]) class indices (int or float), void pixels = ``ignore_index``.

        Returns:
            scalar loss (or per-pixel (B, H, W[, D]) for ``reduction="none"``).
        """
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        if logits.shape[1] != self.weight.numel():
            raise ValueError(f"logits have {logits.shape[1]} channels but the loss has {self.weight.numel()} classes")
        target = prepare_label(label, logits.ndim)
        if target.shape[1:] != logits.shape[2:] or target.shape[0] != logits.shape[0]:
            raise ValueError(f"label shape {tuple(label.shape)} does not match logits shape {tuple(logits.shape)}")
        weight = self.weight.to(logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction=self.reduction)


def get_loss(
    num_classes: int, background_weight: float = 0.25, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> WeightedCrossEntropyLoss:
    """The paper's loss: cross-entropy with weights ``[background_weight, 1, ..., 1]``, void pixels ignored.

    Works for 2D slices (B, K, H, W) and volumes (B, K, H, W, D); labels are (B, 1, ...) int or float maps.

    Args:
        num_classes: number of classes K including background.
        background_weight: weight of the background class (0.25 in the paper's text).
        ignore_index: void label value (255).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
    """
    return WeightedCrossEntropyLoss(class_weights(num_classes, background_weight), ignore_index, reduction)

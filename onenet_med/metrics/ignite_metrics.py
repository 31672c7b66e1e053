"""Ignite metrics for CE, Dice, mIoU, mAP@0.5 and volume Dice, for MONAI ``key_val_metric``/``additional_metrics``.

Expected engine output: MONAI's ``SupervisedEvaluator`` output, i.e. ``engine.state.output`` is a dict (or, after
decollating post-processing, a list of dicts) with ``"pred"`` = raw logits (B, K, H, W) or (B, K, H, W, D) and
``"label"`` = (B, 1, H, W[, D]) class indices (void = 255). Do not post-process ``pred`` (no softmax/argmax): the
metrics need the logits. The default ``output_transform`` is :func:`pred_label_transform`, equivalent to
``monai.handlers.from_engine(["pred", "label"])`` and also accepting a plain ``(y_pred, y)`` pair.

Example (bundle config)::

    "key_val_metric": {"val_mean_dice": {"_target_": "onenet_med.metrics.SegmentationMetrics",
                                         "num_classes": "@num_classes", "class_names": "@class_names", "key": "dice"}}

At the end of an epoch every result (``ce``, ``dice``, ``miou``, ``map50``, per-class keys, and ``volume_dice*`` for
volume inputs) is written into ``engine.state.metrics``, and with ``key`` the selected value also goes under the
metric's own name (``val_mean_dice`` above): one metric object computes everything once. ``compute()`` returns the
whole dict (``key=None``) or the selected float.

Accumulated state is compact: per image TP/FP/FN and one detection score per foreground class, per item the two
CE sums, and per case a name; no probability maps are kept. In DDP every rank's state is all-gathered in
``compute`` (note that a ``DistributedSampler`` that pads the data set counts the padded items twice: use
``monai.data.DistributedSampler(even_divisible=False)`` for validation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric

from onenet_med.metrics.functional import (
    IGNORE_INDEX,
    class_keys,
    dice_from_counts,
    iou_from_counts,
    results_from_statistics,
    slice_statistics,
)

__all__ = ["SegmentationMetrics", "pred_label_transform"]


def pred_label_transform(output: Any) -> Any:
    """Engine output -> ``(pred, label)``: MONAI dict / list of dicts, or an already formed pair."""
    if isinstance(output, Mapping):
        return output["pred"], output["label"]
    if isinstance(output, Sequence) and len(output) > 0 and isinstance(output[0], Mapping):
        return [o["pred"] for o in output], [o["label"] for o in output]
    return output


def _case_names(label: torch.Tensor, count: int) -> list[str | None]:
    """Source file names of the items of a batch, from MONAI metadata when present."""
    meta = getattr(label, "meta", None)
    names = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(names, str):
        names = [names]
    if isinstance(names, Sequence) and len(names) == count:
        return [str(n) for n in names]
    return [None] * count


class SegmentationMetrics(Metric):
    """CE, slice Dice, mIoU, mAP@0.5 and (for volumes) per-volume Dice, accumulated over an epoch.

    Args:
        num_classes: number of classes K including background.
        class_names: names of the K classes (background first) or of the K-1 foreground classes; used in the
            per-class keys (``dice_<name>``); default ``class1..``.
        background_weight: background weight of the CE (as the loss).
        ignore_index: void label value.
        key: return only this entry of the result dict (e.g. ``"dice"``, ``"ce"``, ``"miou"``, ``"map50"``,
            ``"volume_dice"``, ``"dice_<name>"``) as a float; ``None`` returns the dict.
        output_transform: engine output -> ``(pred, label)``; default :func:`pred_label_transform`.
        device: Ignite's metric device (accumulators are kept on CPU regardless; inputs are scored on their device).
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        background_weight: float = 0.25,
        ignore_index: int = IGNORE_INDEX,
        key: str | None = None,
        output_transform: Any = pred_label_transform,
        device: str | torch.device = "cpu",
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = class_keys(self.num_classes, class_names)
        self.background_weight = float(background_weight)
        self.ignore_index = int(ignore_index)
        self.key = key
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._counts: list[torch.Tensor] = []
        self._scores: list[torch.Tensor] = []
        self._volume_counts: list[torch.Tensor] = []
        self._ce_sum: list[torch.Tensor] = []
        self._ce_weight: list[torch.Tensor] = []
        self._names: list[str | None] = []
        self._slices_per_item: list[int] = []
        self._is_volume: bool | None = None

    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Accumulate one batch: ``output = (logits (B, K, H, W[, D]), label (B, 1, H, W[, D]))``."""
        y_pred, y = output[0], output[1]
        is_volume = y_pred.ndim == 5
        if self._is_volume is not None and is_volume != self._is_volume:
            raise ValueError("SegmentationMetrics got both 2D images and 3D volumes in one epoch; score them apart")
        self._is_volume = is_volume
        try:
            stats = slice_statistics(y_pred, y, self.num_classes, self.background_weight, self.ignore_index)
        except ValueError as error:
            names = [n for n in _case_names(y, y_pred.shape[0]) if n is not None]
            raise ValueError(f"{error}" + (f" (cases: {', '.join(names)})" if names else "")) from error
        self._counts.append(stats["counts"])
        self._scores.append(stats["scores"])
        self._ce_sum.append(stats["ce_sum"])
        self._ce_weight.append(stats["ce_weight"])
        if is_volume:
            self._volume_counts.append(stats["volume_counts"])
        batch = y_pred.shape[0]
        self._names.extend(_case_names(y, batch))
        self._slices_per_item.extend([y_pred.shape[-1] if is_volume else 1] * batch)

    def _gathered(self) -> dict[str, Any]:
        """The accumulated state, concatenated over batches and (in DDP) over ranks."""
        k1 = self.num_classes - 1
        local: dict[str, Any] = {
            "counts": torch.cat(self._counts) if self._counts else torch.zeros(0, k1, 3, dtype=torch.long),
            "scores": torch.cat(self._scores) if self._scores else torch.zeros(0, k1, dtype=torch.float64),
            "volume_counts": torch.cat(self._volume_counts) if self._volume_counts else None,
            "ce_sum": torch.cat(self._ce_sum) if self._ce_sum else torch.zeros(0, dtype=torch.float64),
            "ce_weight": torch.cat(self._ce_weight) if self._ce_weight else torch.zeros(0, dtype=torch.float64),
            "names": list(self._names),
            "slices": list(self._slices_per_item),
        }
        if idist.get_world_size() <= 1:
            return local
        parts = idist.all_gather(local)  # one object per rank (all_gather_object): state sizes differ by rank
        merged: dict[str, Any] = {}
        for name in ("counts", "scores", "ce_sum", "ce_weight"):
            merged[name] = torch.cat([p[name] for p in parts])
        volumes = [p["volume_counts"] for p in parts if p["volume_counts"] is not None]
        merged["volume_counts"] = torch.cat(volumes) if volumes else None
        merged["names"] = [n for p in parts for n in p["names"]]
        merged["slices"] = [n for p in parts for n in p["slices"]]
        return merged

    def results(self) -> dict[str, float]:
        """Every result of the epoch as a flat dict (``ce``, ``dice``, ``miou``, ``map50``, per-class keys, ...)."""
        state = self._gathered()
        if state["counts"].shape[0] == 0:
            raise NotComputableError("SegmentationMetrics must have at least one example before it can be computed")
        return results_from_statistics(
            state["counts"],
            state["scores"],
            state["ce_sum"],
            state["ce_weight"],
            state["volume_counts"],
            self.class_names,
        )

    def _select(self, results: Mapping[str, float]) -> float:
        if self.key not in results:
            hint = " (volume_dice needs (B, K, H, W, D) volume inputs)" if self.key.startswith("volume_dice") else ""
            raise KeyError(f"unknown metric key {self.key!r}{hint}; available: {sorted(results)}")
        return results[self.key]

    def compute(self) -> dict[str, float] | float:
        results = self.results()
        return results if self.key is None else self._select(results)

    def completed(self, engine: Engine, name: str) -> None:
        """Write every result into ``engine.state.metrics`` and, with ``key``, the key value under ``name``.

        One computation serves both the key metric (best-model selection) and the full report, so a bundle
        needs a single ``SegmentationMetrics`` (the flattened keys must not collide with ``name``).
        """
        results = self.results()
        if name in results:
            raise ValueError(f"metric name {name!r} collides with a result key; pick another name")
        engine.state.metrics.update(results)
        if self.key is not None:
            engine.state.metrics[name] = self._select(results)

    def per_case_rows(self) -> list[dict[str, Any]]:
        """One row per case for the per-case CSV, in the order seen (rank-major in DDP).

        A case is an input item: an image for 2D inputs (columns ``dice_<c>``, ``iou_<c>``), a volume for 3D inputs
        (``volume_dice_<c>``, plus the slice-level ``dice_<c>`` averaged over the case's slices where present).
        Every row has ``case`` (source file name from MONAI metadata, else ``case_<index>``) and ``ce``.
        Absent classes are NaN.
        """
        state = self._gathered()
        names = self.class_names
        slice_dice = dice_from_counts(state["counts"])
        slice_iou = iou_from_counts(state["counts"])
        rows: list[dict[str, Any]] = []
        start = 0
        for i, (name, n_slices) in enumerate(zip(state["names"], state["slices"])):
            weight = float(state["ce_weight"][i])
            row: dict[str, Any] = {
                "case": name if name is not None else f"case_{i:04d}",
                "ce": float(state["ce_sum"][i]) / weight if weight > 0 else math.nan,
            }
            part_dice = torch.nanmean(slice_dice[start : start + n_slices], 0)
            part_iou = torch.nanmean(slice_iou[start : start + n_slices], 0)
            if state["volume_counts"] is not None:
                row["slices"] = n_slices
                vdice = dice_from_counts(state["volume_counts"][i])
                row.update({f"volume_dice_{c}": float(vdice[j]) for j, c in enumerate(names)})
            row.update({f"dice_{c}": float(part_dice[j]) for j, c in enumerate(names)})
            row.update({f"iou_{c}": float(part_iou[j]) for j, c in enumerate(names)})
            rows.append(row)
            start += n_slices
        return rows

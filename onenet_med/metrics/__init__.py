"""Segmentation metrics (SPEC §5): Dice, IoU, mAP@0.5, weighted CE; Ignite metrics; evaluation reports.

See :mod:`onenet_med.metrics.functional` for the definitions.
"""

from onenet_med.metrics.functional import (
    DEFINITIONS,
    IGNORE_INDEX,
    average_precision,
    class_keys,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    mean_average_precision,
    results_from_statistics,
    segmentation_metrics,
    slice_statistics,
    to_slices,
    volume_dice,
)
from onenet_med.metrics.ignite_metrics import SegmentationMetrics, pred_label_transform
from onenet_med.metrics.report import EvaluationReport, format_table, write_evaluation

__all__ = [
    "DEFINITIONS",
    "EvaluationReport",
    "IGNORE_INDEX",
    "SegmentationMetrics",
    "average_precision",
    "class_keys",
    "confusion_counts",
    "dice_from_counts",
    "format_table",
    "iou_from_counts",
    "mean_average_precision",
    "pred_label_transform",
    "results_from_statistics",
    "segmentation_metrics",
    "slice_statistics",
    "to_slices",
    "volume_dice",
    "write_evaluation",
]

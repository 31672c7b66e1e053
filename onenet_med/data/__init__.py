"""Datasets: task registry, MSD / VOC / Pets datalists, per-task transform chains, caching, demo data, checks.

Typical use::

    from onenet_med.data import get_task, get_datalists, get_transforms, get_dataset

    lists = get_datalists("heart", "data/Task02_Heart", val_fraction=0.2, seed=0)
    train_ds = get_dataset(lists["train"], get_transforms("heart", "train"), cache="memory")
    val_ds = get_dataset(lists["validation"], get_transforms("heart", "validate"), cache="memory")

Only the task registry is imported eagerly; the rest loads on first use (importing MONAI takes seconds, and
``onenet-med --help`` should not pay for it).
"""

from __future__ import annotations

from onenet_med._lazy import lazy_attributes
from onenet_med.data.tasks import GENERIC_MSD, IGNORE_INDEX, TaskSpec, get_task, list_tasks

_LAZY = {
    "CheckReport": "check",
    "DataValidationError": "check",
    "Problem": "check",
    "check_datalist": "check",
    "check_dataset": "check",
    "detect_layout": "check",
    "validate_datalist": "check",
    "CACHE_MODES": "datasets",
    "cache_mode": "datasets",
    "get_datalists": "datasets",
    "get_dataset": "datasets",
    "build_demo_dataset": "demo",
    "download_msd": "msd",
    "split_cases": "msd",
    "PetTrimapd": "natural",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "RandSliceByPosNegd": "transforms",
    "SliceForegroundd": "transforms",
    "get_transforms": "transforms",
}

__all__ = ["GENERIC_MSD", "IGNORE_INDEX", "TaskSpec", "get_task", "list_tasks", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

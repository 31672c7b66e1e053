"""Datasets: task registry, MSD / VOC / Pets datalists, per-task transform chains, caching, demo data, checks.

Typical use::

    from onenet_med.data import get_task, get_datalists, get_transforms, get_dataset

    lists = get_datalists("heart", "data/Task02_Heart", val_fraction=0.2, seed=0)
    train_ds = get_dataset(lists["train"], get_transforms("heart", "train"), cache="memory")
    val_ds = get_dataset(lists["validation"], get_transforms("heart", "validate"), cache="memory")
"""

from onenet_med.data.check import (
    CheckReport,
    DataValidationError,
    Problem,
    check_datalist,
    check_dataset,
    detect_layout,
    validate_datalist,
)
from onenet_med.data.datasets import CACHE_MODES, get_datalists, get_dataset
from onenet_med.data.demo import build_demo_dataset
from onenet_med.data.msd import download_msd, split_cases
from onenet_med.data.natural import PetTrimapd
from onenet_med.data.tasks import IGNORE_INDEX, TaskSpec, get_task, list_tasks
from onenet_med.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandSliceByPosNegd,
    SliceForegroundd,
    get_transforms,
)

__all__ = [
    "CACHE_MODES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckReport",
    "DataValidationError",
    "PetTrimapd",
    "Problem",
    "RandSliceByPosNegd",
    "SliceForegroundd",
    "TaskSpec",
    "build_demo_dataset",
    "check_datalist",
    "check_dataset",
    "detect_layout",
    "download_msd",
    "get_datalists",
    "get_dataset",
    "get_task",
    "get_transforms",
    "list_tasks",
    "split_cases",
    "validate_datalist",
]

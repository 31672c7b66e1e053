"""Small factories the bundle configs call, so that the five bundles' JSON stays short and identical in shape.

Everything a bundle needs beyond plain MONAI/Ignite components lives here or in the other ``onenet_med``
modules; the configs only wire them together (see ``bundles/README.md``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SliceInferer

from onenet_med.data import get_datalists, get_task, validate_datalist
from onenet_med.data.tasks import TaskSpec

__all__ = [
    "bundle_root",
    "bundle_task",
    "default_dataset_dir",
    "default_device",
    "get_inferer",
    "inference_datalist",
    "inference_postprocessing",
    "prepare_datalists",
    "repo_root",
]

logger = logging.getLogger(__name__)


def repo_root() -> Path:
    """The source checkout holding ``bundles/`` and ``data/`` (the package is installed editable from it)."""
    return Path(__file__).resolve().parents[2]


def bundle_root(name: str) -> str:
    """Default ``bundle_root`` of bundle ``name``: ``<checkout>/bundles/<name>`` when the package runs from a
    source checkout, else the current directory (model-zoo convention: run from the bundle folder).

    Users override it on the command line (``--bundle_root PATH``)."""
    candidate = repo_root() / "bundles" / name
    return str(candidate) if candidate.is_dir() else os.getcwd()


def bundle_task(bundle_name: str) -> str:
    """The task a bundle trains by default: its metadata ``name`` without the ``onenet_`` prefix
    (``onenet_heart`` -> ``heart``). The shared configs read the task from here; ``--task`` overrides it."""
    task = bundle_name.removeprefix("onenet_")
    get_task(task)  # unknown -> KeyError listing the known tasks
    return task


def default_dataset_dir(task: str | TaskSpec) -> str:
    """Default ``dataset_dir``: ``<checkout>/data/<folder>`` in a source checkout, else ``./data/<folder>``,
    where the folder is the task's (``Task02_Heart``, ``VOCdevkit/VOC2012``, ``oxford-iiit-pet``)."""
    spec = get_task(task)
    folder = spec.dataset_folder or spec.msd_task or spec.name
    root = repo_root()
    return str(root / "data" / folder) if (root / "bundles").is_dir() else os.path.join("data", folder)


def default_device() -> torch.device:
    """CUDA when available, else CPU; under ``torchrun`` each rank takes ``cuda:LOCAL_RANK``."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def prepare_datalists(
    task: str | TaskSpec,
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 0,
    check: str = "header",
    splits: Sequence[str] = ("train", "validation"),
    num_workers: int = 1,
) -> dict[str, list[dict]]:
    """Datalists of ``task`` with every listed file validated before any engine starts.

    Args:
        task: task name.
        dataset_dir: dataset folder (see :func:`onenet_med.data.get_datalists`).
        val_fraction: fraction of cases held out for validation (split by case / patient).
        seed: split seed.
        check: ``"header"`` (shapes, channels, affines from file headers: fast), ``"full"`` (also label values,
            NaN/inf: reads every voxel) or ``"none"``.
        splits: the splits to validate.
        num_workers: threads reading files for the check.

    Raises:
        FileNotFoundError: dataset folder, dataset.json or listed files missing.
        onenet_med.data.DataValidationError: every problem found, each naming its file.
    """
    if not os.path.exists(dataset_dir):
        raise FileNotFoundError(
            f"dataset_dir {os.fspath(dataset_dir)!r} does not exist: download or prepare the data "
            "(see the bundle's docs/README.md) or pass --dataset_dir PATH"
        )
    lists = get_datalists(task, dataset_dir, val_fraction=val_fraction, seed=seed)
    if check != "none":  # every split in one check: one error listing every bad file of every split
        items = [item for split in splits for item in lists[split]]
        for warning in validate_datalist(task, items, level=check, num_workers=max(1, num_workers)):
            logger.warning(str(warning))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in lists.items())
    logger.info(f"task {get_task(task).name}: {sizes} items from {dataset_dir}")
    return lists


def get_inferer(task: str | TaskSpec, sw_batch_size: int = 32, **kwargs: Any) -> Inferer:
    """The inferer that turns a validation / inference item into logits of the same spatial size.

    Volumes (MSD tasks): :class:`monai.inferers.SliceInferer` over the axial axis (the last one after RAS
    orientation), whole slices (``roi_size`` -1 = the slice's size), ``sw_batch_size`` slices per forward pass.
    Natural images: :class:`monai.inferers.SimpleInferer`.
    """
    if get_task(task).is_volume:
        return SliceInferer(roi_size=(-1, -1), sw_batch_size=sw_batch_size, spatial_dim=2, progress=False, **kwargs)
    return SimpleInferer()


def inference_datalist(
    task: str | TaskSpec, dataset_dir: str | os.PathLike | None = None, input_files: Sequence[str] | None = None
) -> list[dict]:
    """Items to predict: ``input_files`` when given (files, folders of images or an MSD dataset.json, as
    ``onenet-med predict`` takes them), else the dataset's test split.

    Every file is checked (exists, readable, right channel count) before inference starts; problems raise
    :class:`onenet_med.data.DataValidationError` naming the files.
    """
    spec = get_task(task)
    if input_files:
        from onenet_med.inference.predictor import IMAGE_SUFFIXES, expand_inputs

        suffixes = IMAGE_SUFFIXES if spec.is_volume else (".png", ".jpg", ".jpeg")
        items = [{"image": path} for path in expand_inputs(input_files, suffixes)]
    else:
        if dataset_dir is None or not os.path.exists(dataset_dir):
            raise FileNotFoundError(f"no input_files given and dataset_dir {dataset_dir!r} does not exist")
        items = get_datalists(task, dataset_dir)["test"]
        items = [{"image": item["image"]} for item in items]
    if not items:
        hint = "" if input_files else " (the dataset has no test list: pass --input_files)"
        raise ValueError(f"nothing to predict: no images in {input_files or dataset_dir}{hint}")
    validate_datalist(task, items, level="header")
    return items


def inference_postprocessing(
    task: str | TaskSpec, preprocessing: Any, output_dir: str | os.PathLike, output_postfix: str = "seg"
) -> Any:
    """Logits -> label map in the input's geometry, saved as uint8 (NIfTI for volumes, PNG for natural images).

    Softmax, then :class:`monai.transforms.Invertd` undoes the preprocessing (orientation, resize, padding) on
    the probabilities (bilinear), then argmax; the file is written atomically next to nothing half-done.
    """
    import numpy as np
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, SaveImaged

    from onenet_med.inference.writers import AtomicNibabelWriter, AtomicPILWriter

    volume = get_task(task).is_volume
    return Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
            SaveImaged(
                "pred",
                output_dir=os.fspath(output_dir),
                output_postfix=output_postfix,
                output_ext=".nii.gz" if volume else ".png",
                output_dtype=np.uint8,
                resample=False,
                separate_folder=False,
                print_log=False,
                writer=AtomicNibabelWriter if volume else AtomicPILWriter,
            ),
        ]
    )

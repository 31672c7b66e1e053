"""Small factories the bundle configs call, so that every bundle's JSON stays short and identical in shape.

Everything a bundle needs beyond plain MONAI/Ignite components lives here or in the other ``onenet_med``
modules; the configs only wire them together (see ``bundles/README.md``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SliceInferer

from onenet_med.bundle.record import read_task_record
from onenet_med.data import get_datalists, get_task, validate_datalist
from onenet_med.data.tasks import GENERIC_MSD, TaskSpec

__all__ = [
    "bundle_root",
    "bundle_task",
    "default_dataset_dir",
    "default_device",
    "get_inferer",
    "inference_datalist",
    "inference_postprocessing",
    "init_distributed",
    "is_main_process",
    "prepare_datalists",
    "read_task_record",
    "require_inputs",  # the configs call it as ob.read_task_record; its home is onenet_med.bundle.record
    "resolve_task",
]

logger = logging.getLogger(__name__)


def bundle_root() -> str:
    """The bundle folder whose configs are running: the folder above ``configs/`` (MONAI's own rule for the
    bundle root it puts on ``sys.path``), wherever the bundle lives: in a checkout, a copy, an extracted zip.

    ``monai.bundle run`` and :class:`monai.bundle.ConfigWorkflow` keep the config folder on the workflow
    (``config_root_path``) but do not hand it to config expressions; this finds the workflow evaluating the
    expression on the call stack. Without one (a bare :class:`monai.bundle.ConfigParser`, e.g. in
    ``monai.bundle ckpt_export``) it is the current directory, the model-zoo convention. ``--bundle_root PATH``
    overrides it.
    """
    from monai.bundle import ConfigWorkflow

    frame = sys._getframe(1)
    while frame is not None:
        workflow = frame.f_locals.get("self")
        if isinstance(workflow, ConfigWorkflow):
            configs = Path(workflow.config_root_path).resolve()
            return str(configs.parent if configs.name == "configs" else configs)
        frame = frame.f_back
    return os.getcwd()


def bundle_task(bundle_name: str) -> str:
    """The task a bundle trains by default: its metadata ``name`` without the ``onenet_`` prefix
    (``onenet_heart`` -> ``heart``; ``onenet_msd`` -> ``msd``, the generic task whose channels and classes come
    from the dataset). The shared configs read the task from here; ``--task`` overrides it."""
    task = bundle_name.removeprefix("onenet_")
    get_task(task)  # unknown -> KeyError listing the known tasks
    return task


def default_dataset_dir(task: str | TaskSpec, bundle_root: str | os.PathLike) -> str:
    """Default ``dataset_dir``, found from the bundle's own folder (never from where the package is installed):
    ``<bundle_root>/data/<folder>`` when it exists, else, for a bundle inside a checkout
    (``<checkout>/bundles/<name>``), ``<checkout>/data/<folder>``, where the folder is the task's
    (``Task02_Heart``, ``VOCdevkit/VOC2012``, ``oxford-iiit-pet``). ``--dataset_dir PATH`` overrides it."""
    spec = get_task(task)
    folder = spec.dataset_folder or spec.msd_task or spec.name
    root = Path(bundle_root)
    candidates = [root / "data" / folder]
    if root.parent.name == "bundles":
        candidates.append(root.parent.parent / "data" / folder)
    return str(next((c for c in candidates if c.exists()), candidates[-1]))


def default_device() -> torch.device:
    """CUDA when available, else CPU; under ``torchrun`` each rank takes ``cuda:LOCAL_RANK``."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of an initialised process group: the role that logs at INFO, writes
    TensorBoard events, progress bars, checkpoints and reports (handlers carry ``"_disabled_": "$not
    ob.is_main_process()"``)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(device: torch.device | str | None = None) -> None:
    """Join the ``torchrun`` process group (NCCL on CUDA, else gloo), pin this rank's GPU, and keep INFO logging to
    rank 0: the other ranks log warnings and errors only."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(device)
    if not is_main_process():
        logging.disable(logging.INFO)


def resolve_task(
    task: str | TaskSpec, dataset_dir: str | os.PathLike | None = None, trained: Mapping[str, Any] | None = None
) -> TaskSpec:
    """The task a bundle runs.

    1. ``trained``: the record saved with the checkpoint being loaded (:func:`onenet_med.bundle.record.
       read_task_record`): the task exactly as trained, whatever the dataset says now.
    2. a registered task (``heart``, ``voc``, ...): its :class:`~onenet_med.data.TaskSpec`.
    3. the generic ``msd`` task: read from ``dataset_dir/dataset.json`` (channels from ``modality``, classes and
       names from ``labels``, CT window or MRI z-score from the modality; a registered task when the folder or the
       name is one); when its volumes have different in-plane sizes, training pads slices to the largest.
       Without a dataset.json the generic placeholder (1 channel, 2 classes) with a warning.

    Raises:
        ValueError: a bad dataset.json (keys of ``modality`` / ``labels`` not 0..N-1, ...), naming the file.
    """
    if trained is not None:
        return trained["task_spec"]
    spec = get_task(task)
    if spec is not GENERIC_MSD:
        return spec
    from onenet_med.data.msd import common_slice_size, read_msd_items, spec_from_dataset_json

    if dataset_dir is None or not (Path(dataset_dir) / "dataset.json").is_file():
        logger.warning(
            f"task msd: no trained task record and no dataset.json in {dataset_dir}: assuming 1 channel and 2 "
            "classes (pass --dataset_dir PATH/TO/TaskXX_Name, or load a checkpoint with task.json beside it)"
        )
        return spec
    found = spec_from_dataset_json(dataset_dir)
    if found.name in _registered_names():
        return found
    training, _ = read_msd_items(dataset_dir)
    present = [item for item in training if os.path.isfile(_first_image(item))]
    return found.replace(min_slice_size=common_slice_size(present) if present else None)


def _registered_names() -> list[str]:
    from onenet_med.data import list_tasks

    return list_tasks()


def _first_image(item: Mapping[str, Any]) -> str:
    image = item["image"]
    return str(image[0] if isinstance(image, (list, tuple)) else image)


def prepare_datalists(
    task: str | TaskSpec,
    dataset_dir: str | os.PathLike,
    val_fraction: float | None = 0.2,
    seed: int | None = 0,
    check: str = "header",
    splits: Sequence[str] = ("train", "validation"),
    num_workers: int = 1,
    split_file: str | os.PathLike | None = None,
    save_split: str | os.PathLike | None = None,
) -> dict[str, list[dict]]:
    """Datalists of ``task`` with every listed file validated before any engine starts.

    Args:
        task: task name or spec.
        dataset_dir: dataset folder (see :func:`onenet_med.data.get_datalists`).
        val_fraction: fraction of cases held out for validation (split by case / patient); ``None``: 0.2, or
            the split file's.
        seed: split seed (``None``: 0, or the split file's).
        check: ``"header"`` (shapes, channels, affines from file headers: fast), ``"full"`` (also label values,
            NaN/inf: reads every voxel) or ``"none"``.
        splits: the splits to validate.
        num_workers: threads reading files for the check.
        split_file: a split to use (:mod:`onenet_med.bundle.split`): training's ``datalist.json``, or a fixed
            split of one's own. When the run saves no split (evaluation), a ``val_fraction`` / ``seed`` other than
            the file's is an error, and a missing file falls back to ``val_fraction`` / ``seed`` with a warning;
            training with a split file that does not exist is an error.
        save_split: where training writes the case ids it uses (rank 0).

    Raises:
        FileNotFoundError: dataset folder, dataset.json, listed files or the split file missing.
        ValueError: a split file that does not fit the dataset, or asks for other settings (naming the file).
        onenet_med.data.DataValidationError: every problem found, each naming its file.
    """
    from onenet_med.bundle.split import check_split_settings, read_split, select_split, write_split

    spec = get_task(task)
    if not os.path.exists(dataset_dir):
        if spec is GENERIC_MSD:
            hint = "pass --dataset_dir PATH/TO/TaskXX_Name (any MSD-layout folder)"
        else:
            hint = "download or prepare the data (see the bundle's docs/README.md) or pass --dataset_dir PATH"
        raise FileNotFoundError(f"dataset_dir {os.fspath(dataset_dir)!r} does not exist: {hint}")
    document = None
    if split_file is not None:
        if os.path.isfile(split_file) or save_split is not None:
            document = read_split(split_file)
            if save_split is None:
                check_split_settings(document, split_file, val_fraction=val_fraction, seed=seed)
        else:
            logger.warning(
                f"no saved split {os.fspath(split_file)}: splitting the dataset with val_fraction "
                f"{0.2 if val_fraction is None else val_fraction}, seed {0 if seed is None else seed}; the held-out "
                "cases may differ from the training run's"
            )
    val_fraction = 0.2 if val_fraction is None else val_fraction
    seed = 0 if seed is None else seed
    lists = get_datalists(spec, dataset_dir, val_fraction=val_fraction, seed=seed)
    if document is not None:
        lists = {**select_split(document, lists["train"] + lists["validation"], split_file), "test": lists["test"]}
        logger.info(f"split from {os.fspath(split_file)}")
    if save_split is not None and is_main_process():
        how = {"source": os.path.abspath(split_file)} if document is not None else {}
        recorded = (None, None) if document is not None else (val_fraction, seed)
        write_split(
            save_split,
            lists,
            task=spec.name,
            dataset_dir=os.path.abspath(dataset_dir),
            val_fraction=recorded[0],
            seed=recorded[1],
            **how,
        )
    if check != "none":  # every split in one check: one error listing every bad file of every split
        items = [item for split in splits for item in lists[split]]
        try:
            problems = validate_datalist(spec, items, level=check, num_workers=max(1, num_workers))
        except Exception as error:
            raise _with_dataset_json_hint(error, spec, dataset_dir) from None
        for warning in problems:
            logger.warning(str(warning))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in lists.items())
    logger.info(f"task {spec.name}: {sizes} items from {dataset_dir}")
    return lists


def _with_dataset_json_hint(error: Exception, spec: TaskSpec, dataset_dir: str | os.PathLike) -> Exception:
    """For a task read from a dataset.json, say where its channels and classes came from."""
    from onenet_med.data import DataValidationError

    if not isinstance(error, DataValidationError) or spec.name in _registered_names():
        return error
    source = Path(dataset_dir) / "dataset.json"
    context = (
        f"task {spec.name} ({source}: 'modality' lists {spec.in_channels} channel(s), 'labels' "
        f"{spec.num_classes} classes 0..{spec.num_classes - 1})"
    )
    return DataValidationError(error.problems, context=context)


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
    :class:`onenet_med.data.DataValidationError` naming the files. Without ``input_files`` and without a dataset
    (or one with no test list) the list is empty and :func:`require_inputs` stops the run with the reason, so that
    the bundle's properties resolve without any data (model-zoo CI checks ``inference.json`` alone).
    """
    spec = get_task(task)
    if input_files:
        from onenet_med.bundle.inputs import IMAGE_SUFFIXES, expand_inputs

        suffixes = IMAGE_SUFFIXES if spec.is_volume else (".png", ".jpg", ".jpeg")
        items = [{"image": path} for path in expand_inputs(input_files, suffixes)]
        if not items:
            raise ValueError(f"nothing to predict: no images in {input_files}")
    elif dataset_dir is not None and os.path.exists(dataset_dir):
        items = [{"image": item["image"]} for item in get_datalists(spec, dataset_dir)["test"]]
    else:
        items = []
    if items:
        validate_datalist(spec, items, level="header")
    return items


def require_inputs(
    dataset: Sequence, input_files: Sequence[str] | None = None, dataset_dir: str | os.PathLike | None = None
) -> None:
    """Stop an inference run that has nothing to predict, saying why (``inference.json``'s first ``run`` step).

    Raises:
        FileNotFoundError: no ``input_files`` and no dataset.
        ValueError: the dataset lists no test images.
    """
    if len(dataset):
        return
    if not input_files and (dataset_dir is None or not os.path.exists(dataset_dir)):
        raise FileNotFoundError(
            f"no input_files given and dataset_dir {os.fspath(dataset_dir) if dataset_dir else None!r} does not "
            "exist: pass --input_files \"['scan.nii.gz', 'folder/']\" or --dataset_dir PATH"
        )
    raise ValueError(f"nothing to predict: {input_files or dataset_dir} lists no test images: pass --input_files")


#: Output formats of ``inference.json`` (``output_ext``), by kind of task.
VOLUME_EXTENSIONS = (".nii.gz", ".nii")
IMAGE_EXTENSIONS = (".png",)


def inference_postprocessing(
    task: str | TaskSpec,
    preprocessing: Any,
    output_dir: str | os.PathLike,
    output_postfix: str = "seg",
    output_ext: str | None = None,
    output_dtype: str = "uint8",
    separate_folder: bool = False,
) -> Any:
    """Logits -> label map in the input's geometry, saved atomically (a half-written file never appears).

    Softmax, then :class:`monai.transforms.Invertd` undoes the preprocessing (orientation, resize, padding) on
    the probabilities (bilinear), then argmax.

    Args:
        task: task name or spec.
        preprocessing: the chain the items went through (its spatial steps are inverted).
        output_dir: folder of the outputs.
        output_postfix: ``<input stem>_<postfix><ext>``.
        output_ext: ``.nii.gz`` / ``.nii`` for volumes (default ``.nii.gz``), ``.png`` for natural images.
        output_dtype: label dtype (``uint8`` holds 256 classes).
        separate_folder: one sub-folder per input (``<output_dir>/<stem>/<stem>_seg.nii.gz``), as MONAI's
            ``SaveImage`` does by default.

    Raises:
        ValueError: an extension the task's writer does not write.
    """
    import numpy as np
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, SaveImaged

    from onenet_med.inference.writers import AtomicNibabelWriter, AtomicPILWriter

    spec = get_task(task)
    allowed = VOLUME_EXTENSIONS if spec.is_volume else IMAGE_EXTENSIONS
    output_ext = output_ext or allowed[0]
    if output_ext not in allowed:
        raise ValueError(f"output_ext {output_ext!r}: task {spec.name} writes {' or '.join(allowed)}")
    return Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
            SaveImaged(
                "pred",
                output_dir=os.fspath(output_dir),
                output_postfix=output_postfix,
                output_ext=output_ext,
                output_dtype=np.dtype(output_dtype),
                resample=False,
                separate_folder=bool(separate_folder),
                print_log=False,
                writer=AtomicNibabelWriter if spec.is_volume else AtomicPILWriter,
            ),
        ]
    )

"""Dataset validation: ``onenet-med data check PATH`` and the same checks before training/inference.

Every problem is collected (never stop at the first one) and names the file:

* files listed but missing; unreadable or corrupt images (truncated gzip, broken PNG/JPEG)
* image/label shape or affine mismatch; wrong channel count for the task
* label values outside the task's classes (255 = void allowed where the task has an ignore index),
  non-integer label values; NaN/inf voxels
* empty labels (no foreground): a warning, not an error

``level="header"`` reads only headers (existence, channels, shapes, affines; fast, what training runs
before it starts); ``level="full"`` also reads every voxel (values, NaN/inf, corrupt data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onenet_med.data.tasks import TaskSpec, get_task

__all__ = [
    "CheckReport",
    "DataValidationError",
    "Problem",
    "check_datalist",
    "check_dataset",
    "check_item",
    "detect_layout",
    "validate_datalist",
]

LEVELS = ("header", "full")
_AFFINE_ATOL = 1e-3  # mm


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``"error"`` or ``"warning"``; ``path`` the file concerned."""

    severity: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.path}: {self.message}"


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`."""

    root: str
    layout: str
    task: str
    n_items: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = f"{self.root}: {self.layout} layout, task {self.task}, {self.n_items} item(s) checked"
        return f"{head}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"


class DataValidationError(ValueError):
    """Raised by :func:`validate_datalist`; the message lists every error, each naming its file."""

    def __init__(self, problems: Sequence[Problem], context: str = ""):
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        prefix = f"{context}: " if context else ""
        super().__init__(f"{prefix}{len(self.problems)} data problem(s):\n  {shown}{more}")


def _err(path, msg) -> Problem:
    return Problem("error", str(path), msg)


def _warn(path, msg) -> Problem:
    return Problem("warning", str(path), msg)


# ---------------------------------------------------------------------------------------------- volumes


def _load_nifti(path: str, problems: list[Problem]):
    import nibabel as nib

    if not os.path.isfile(path):
        problems.append(_err(path, "file listed but missing"))
        return None
    try:
        return nib.load(path)
    except Exception as e:  # nibabel raises many types for bad headers
        problems.append(_err(path, f"unreadable image ({type(e).__name__}: {e})"))
        return None


def _read_data(img, path: str, problems: list[Problem]) -> np.ndarray | None:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # EOFError, zlib.error, OSError, ValueError for truncated/corrupt data
        problems.append(_err(path, f"corrupt image data ({type(e).__name__}: {e})"))
        return None


def _check_label_values(values: np.ndarray, spec: TaskSpec, path: str, problems: list[Problem]) -> None:
    if values.size == 0:
        return
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            problems.append(_err(path, "label has NaN/inf values"))
            return
        if np.any(values != np.round(values)):
            problems.append(_err(path, "label has non-integer values"))
            return
    allowed = set(range(spec.num_classes))
    if spec.ignore_index is not None:
        allowed.add(spec.ignore_index)
    bad = sorted(int(v) for v in values if int(v) not in allowed)
    if bad:
        problems.append(
            _err(
                path,
                f"label values {bad[:10]} outside the task's classes 0..{spec.num_classes - 1}"
                + (f" (+ {spec.ignore_index} void)" if spec.ignore_index is not None else ""),
            )
        )
        return
    fg = [v for v in values if 0 < int(v) < spec.num_classes]
    if not fg:
        problems.append(_warn(path, "empty label (no foreground class present)"))


def _check_volume_item(item: dict, spec: TaskSpec, level: str) -> list[Problem]:
    problems: list[Problem] = []
    images = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
    imgs = [_load_nifti(str(p), problems) for p in images]
    label_path = item.get("label")
    lab = _load_nifti(str(label_path), problems) if label_path is not None else None
    if any(i is None for i in imgs):
        return problems
    first = str(images[0])
    shapes = [tuple(int(s) for s in i.shape) for i in imgs]
    if any(len(s) not in (3, 4) for s in shapes):
        problems.append(_err(first, f"image must be 3D or 4D (channels last), shape is {shapes[0]}"))
        return problems
    spatial = shapes[0][:3]
    if any(s[:3] != spatial for s in shapes):
        problems.append(_err(first, f"per-channel files have different shapes {shapes}"))
    channels = sum(s[3] if len(s) == 4 else 1 for s in shapes)
    if channels != spec.in_channels:
        problems.append(_err(first, f"{channels} channel(s), task {spec.name} expects {spec.in_channels}"))
    if lab is not None:
        lshape = tuple(int(s) for s in lab.shape)
        lspatial = lshape[:3] if len(lshape) == 3 or (len(lshape) == 4 and lshape[3] == 1) else None
        if lspatial is None:
            problems.append(_err(label_path, f"label must be one 3D volume, shape is {lshape}"))
        elif lspatial != spatial:
            problems.append(_err(label_path, f"label shape {lspatial} != image shape {spatial} ({first})"))
        if not np.allclose(lab.affine, imgs[0].affine, atol=_AFFINE_ATOL):
            problems.append(
                _err(
                    label_path,
                    f"label affine differs from the image's ({first}):\n"
                    f"    image {np.round(imgs[0].affine, 4).tolist()}\n    label {np.round(lab.affine, 4).tolist()}",
                )
            )
    if level != "full":
        return problems
    for p, i in zip(images, imgs):
        data = _read_data(i, str(p), problems)
        if data is not None and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
            n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            problems.append(_err(p, f"{n_bad} NaN/inf voxel(s)"))
    if lab is not None:
        ldata = _read_data(lab, str(label_path), problems)
        if ldata is not None:
            _check_label_values(_unique(ldata), spec, str(label_path), problems)
    return problems


def _unique(data: np.ndarray) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer) and data.size and data.min() >= 0 and data.max() < 65536:
        return np.flatnonzero(np.bincount(data.ravel()))
    return np.unique(data)


# ------------------------------------------------------------------------------------------ natural images


def _open_pil(path: str, level: str, problems: list[Problem]):
    from PIL import Image

    if not os.path.isfile(path):
        problems.append(_err(path, "file listed but missing"))
        return None
    try:
        img = Image.open(path)
        if level == "full":
            img.load()
        return img
    except Exception as e:  # PIL.UnidentifiedImageError, OSError (truncated), SyntaxError
        problems.append(_err(path, f"unreadable or corrupt image ({type(e).__name__}: {e})"))
        return None


def _check_natural_item(item: dict, spec: TaskSpec, level: str) -> list[Problem]:
    problems: list[Problem] = []
    image_path, label_path = str(item["image"]), item.get("label")
    img = _open_pil(image_path, level, problems)
    lab = _open_pil(str(label_path), level, problems) if label_path is not None else None
    if img is not None and img.mode != "RGB":
        problems.append(_warn(image_path, f"mode {img.mode}, converted to RGB when loaded"))
    if spec.kind == "pets" and spec.num_classes > 3:
        class_id = item.get("class_id")
        if not isinstance(class_id, (int, np.integer)) or not 1 <= int(class_id) <= 37:
            problems.append(_err(image_path, f"breed class id {class_id!r} outside 1..37"))
    if lab is None:
        return problems
    if lab.mode not in ("P", "L"):
        what = "palette/index PNG with class ids" if spec.kind == "voc" else "single-channel trimap (1, 2, 3)"
        problems.append(_err(label_path, f"label mode {lab.mode}: expected a {what}"))
        return problems
    if img is not None and lab.size != img.size:
        problems.append(_err(label_path, f"label size {lab.size} != image size {img.size} ({image_path})"))
    if level != "full":
        return problems
    values = _unique(np.asarray(lab))
    if spec.kind == "pets":
        bad = sorted(int(v) for v in values if int(v) not in (1, 2, 3))
        if bad:
            problems.append(_err(label_path, f"trimap values {bad[:10]} outside 1 (pet), 2 (background), 3 (border)"))
        elif 1 not in values:
            problems.append(_warn(label_path, "empty label (no pet pixel in the trimap)"))
    else:
        _check_label_values(values, spec, str(label_path), problems)
    return problems


# ------------------------------------------------------------------------------------------------ public


def check_item(item: dict, task: str | TaskSpec, level: str = "full") -> list[Problem]:
    """Problems of one data dict (``{"image", "label"?, ...}``) for ``task``."""
    spec = get_task(task)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")
    if "image" not in item:
        return [_err(item.get("case_id", "?"), "data dict has no 'image'")]
    if spec.is_volume:
        return _check_volume_item(item, spec, level)
    return _check_natural_item(item, spec, level)


def check_datalist(
    task: str | TaskSpec, datalist: Sequence[dict], level: str = "full", num_workers: int = 1
) -> list[Problem]:
    """Problems of every item of ``datalist`` (in order), checked with ``num_workers`` threads."""
    spec = get_task(task)
    if num_workers > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            results = list(pool.map(lambda it: check_item(it, spec, level), datalist))
    else:
        results = [check_item(it, spec, level) for it in datalist]
    return [p for r in results for p in r]


def validate_datalist(
    task: str | TaskSpec, datalist: Sequence[dict], level: str = "header", num_workers: int = 1
) -> list[Problem]:
    """Check ``datalist`` before training/inference starts; raise on any error.

    Returns:
        the warnings (e.g. empty labels).

    Raises:
        DataValidationError: listing every error, each naming its file.
    """
    problems = check_datalist(task, datalist, level, num_workers)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataValidationError(errors, context=f"task {get_task(task).name}")
    return [p for p in problems if p.severity == "warning"]


def detect_layout(path: str | os.PathLike) -> tuple[str, Path]:
    """Recognise the tree at ``path``: ``("msd", task folder)``, ``("voc", VOC2012 folder)`` or
    ``("pets", Pet folder)``.

    Raises:
        FileNotFoundError: when no known layout is found.
    """
    from onenet_med.data.natural import find_pets_root, find_voc_root

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory.")
    if (root / "dataset.json").is_file():
        return "msd", root
    for kind, finder in (("voc", find_voc_root), ("pets", find_pets_root)):
        try:
            return kind, finder(root)
        except FileNotFoundError:
            pass
    subs = sorted(p.parent for p in root.glob("*/dataset.json"))
    if len(subs) == 1:
        return "msd", subs[0]
    if len(subs) > 1:
        raise FileNotFoundError(f"{root}: several MSD tasks ({', '.join(s.name for s in subs)}); check one at a time.")
    raise FileNotFoundError(
        f"{root}: no MSD task (dataset.json), PASCAL VOC (VOC2012/ImageSets/Segmentation) or Oxford-IIIT Pet "
        "(annotations/trainval.txt + images/) tree found."
    )


def _msd_dataset_problems(task_dir: Path, spec: TaskSpec, meta: dict, n_train: int, n_test: int) -> list[Problem]:
    problems = []
    json_path = task_dir / "dataset.json"
    modality = meta.get("modality")
    if isinstance(modality, dict) and len(modality) != spec.in_channels:
        problems.append(
            _err(json_path, f"'modality' lists {len(modality)} channel(s), task {spec.name} expects {spec.in_channels}")
        )
    labels = meta.get("labels")
    if isinstance(labels, dict) and len(labels) != spec.num_classes:
        problems.append(
            _err(json_path, f"'labels' lists {len(labels)} class(es), task {spec.name} expects {spec.num_classes}")
        )
    for key, n in (("numTraining", n_train), ("numTest", n_test)):
        if key in meta and meta[key] != n:
            problems.append(_warn(json_path, f"{key} is {meta[key]} but {n} item(s) are listed"))
    return problems


def check_dataset(
    path: str | os.PathLike, task: str | TaskSpec | None = None, level: str = "full", num_workers: int = 1
) -> CheckReport:
    """Check a whole MSD task, VOC tree or Pets tree; the report lists every problem found.

    Args:
        path: the tree (MSD task folder or its parent; VOCdevkit/VOC2012 or a parent; Pet folder).
        task: task to check against; default: recognised from the tree (MSD: folder / dataset.json name,
            else a generic spec from dataset.json; VOC: ``voc``; Pets: ``petf`` when list.txt exists,
            which checks trimaps and breed ids, else ``pets``).
        level: ``"full"`` (read every voxel) or ``"header"``.
        num_workers: threads reading files.
    """
    from onenet_med.data.msd import read_dataset_json, read_msd_items, spec_from_dataset_json
    from onenet_med.data.natural import pets_items, voc_items

    layout, root = detect_layout(path)
    problems: list[Problem] = []
    items: list[dict] = []
    if layout == "msd":
        try:
            meta = read_dataset_json(root)
            spec = get_task(task) if task is not None else spec_from_dataset_json(root)
            training, test = read_msd_items(root)
        except (ValueError, FileNotFoundError) as e:
            return CheckReport(str(root), layout, str(task or "?"), 0, [_err(root / "dataset.json", str(e))])
        problems += _msd_dataset_problems(root, spec, meta, len(training), len(test))
        items = training + test
    else:
        if task is not None:
            spec = get_task(task)
        elif layout == "voc":
            spec = get_task("voc")
        else:
            spec = get_task("petf" if (root / "annotations" / "list.txt").is_file() else "pets")
        try:
            splits = voc_items(root) if layout == "voc" else pets_items(root)
        except (ValueError, FileNotFoundError) as e:
            return CheckReport(str(root), layout, spec.name, 0, [_err(root, str(e))])
        seen: set[str] = set()
        for split_items in splits.values():
            for it in split_items:
                if it["image"] not in seen:
                    seen.add(it["image"])
                    items.append(it)
    if not items:
        problems.append(_err(root, "no items listed"))
    problems += check_datalist(spec, items, level, num_workers)
    return CheckReport(str(root), layout, spec.name, len(items), problems)

"""Medical Segmentation Decathlon (MSD) layout: finding a task folder, datalists split by volume, download.

The layout is ``TaskXX_Name/dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``. Each volume is one
patient, so splitting the volume list is a split by patient: no patient ever has slices in two splits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.apps import DecathlonDataset, download_url, extractall
from monai.data import load_decathlon_datalist

from onenet_med.data.tasks import TaskSpec, get_task

__all__ = [
    "case_id_from_path",
    "common_slice_size",
    "download_msd",
    "find_msd_task_dir",
    "msd_datalists",
    "read_dataset_json",
    "read_msd_items",
    "ras_slice_size",
    "spec_from_dataset_json",
    "split_cases",
]


def case_id_from_path(path: str | os.PathLike | Sequence) -> str:
    """``.../la_003.nii.gz`` -> ``"la_003"`` (first file when a list of per-channel files is given)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    name = os.path.basename(str(path))
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_msd_task_dir(task: str | TaskSpec, dataset_dir: str | os.PathLike) -> Path:
    """Return the folder holding ``dataset.json``: ``dataset_dir`` itself or ``dataset_dir/<msd_task>``.

    Raises:
        FileNotFoundError: naming both places looked at.
    """
    spec = get_task(task)
    root = Path(dataset_dir)
    candidates = [root]
    if spec.msd_task:
        candidates.append(root / spec.msd_task)
    for cand in candidates:
        if (cand / "dataset.json").is_file():
            return cand
    looked = " or ".join(str(c / "dataset.json") for c in candidates)
    hint = (
        f" (download it with `onenet-med data download --task {spec.name} --root {root}`)" if spec.kind == "msd" else ""
    )
    if spec.kind == "demo":
        hint = f" (build it with `onenet-med data demo --out {root}`)"
    raise FileNotFoundError(f"{spec.name}: no MSD dataset.json found at {looked}{hint}.")


def read_dataset_json(task_dir: str | os.PathLike) -> dict:
    """Parse ``task_dir/dataset.json``; errors name the file and the problem."""
    path = Path(task_dir) / "dataset.json"
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(meta, dict) or "training" not in meta:
        raise ValueError(f"{path}: no 'training' list (not an MSD dataset.json).")
    return meta


def spec_from_dataset_json(task_dir: str | os.PathLike, name: str | None = None) -> TaskSpec:
    """The registered task whose folder or dataset.json name matches, else a generic spec built from it.

    The generic spec reads channels from ``modality`` and classes from ``labels`` (keys ``"0"``..``"N-1"``,
    background first); CT is recognised from the modality names and gets a wide window, anything else is
    z-scored like MRI. In-plane size: native, padded to a multiple of 32.

    Raises:
        ValueError: naming dataset.json: keys of ``modality`` / ``labels`` that are not 0..N-1, fewer than two
            labels.
    """
    task_dir = Path(task_dir)
    json_path = task_dir / "dataset.json"
    meta = read_dataset_json(task_dir)
    from onenet_med.data.tasks import list_tasks

    for task_name in list_tasks():
        spec = get_task(task_name)
        if spec.is_volume and spec.msd_task and (task_dir.name == spec.msd_task or meta.get("name") == spec.msd_name):
            return spec
    modality = meta.get("modality") or {"0": "image"}
    labels = meta.get("labels") or {"0": "background", "1": "foreground"}
    modality_names = _numbered_names(modality, "modality", json_path)
    class_names = _numbered_names(labels, "labels", json_path)
    if len(class_names) < 2:
        raise ValueError(f"{json_path}: 'labels' lists {len(class_names)} class; a segmentation task needs two or more")
    is_ct = any(m.strip().upper() == "CT" for m in modality_names)
    return TaskSpec(
        name=name or task_dir.name,
        kind="msd",
        in_channels=len(modality_names),
        num_classes=len(class_names),
        class_names=class_names,
        modality="ct" if is_ct else "mri",
        channel_names=modality_names,
        msd_task=task_dir.name,
        msd_name=meta.get("name"),
        ct_window=(-1000.0, 1000.0) if is_ct else None,
        description=str(meta.get("description", "")),
    )


def _numbered_names(entries, key: str, json_path: Path) -> tuple[str, ...]:
    """``{"0": "a", "1": "b"}`` -> ``("a", "b")``; the keys must be exactly 0..N-1."""
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f'{json_path}: \'{key}\' must map "0", "1", ... to names, got {entries!r}')
    try:
        numbers = sorted(int(k) for k in entries)
    except (TypeError, ValueError):
        numbers = None
    if numbers != list(range(len(entries))):
        unit = "channel" if key == "modality" else "class"
        raise ValueError(
            f"{json_path}: '{key}' keys must be 0..{len(entries) - 1} (one per {unit}, counting from 0), "
            f"got {sorted(entries)}"
        )
    return tuple(str(entries[k]) for k in sorted(entries, key=int))


def ras_slice_size(path: str | os.PathLike) -> tuple[int, int]:
    """In-plane (H, W) of a volume's axial slices after orientation to RAS, read from its header only."""
    import nibabel as nib

    img = nib.load(os.fspath(path))
    axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)  # input axis i becomes RAS axis axes[i]
    ras = [0, 0, 0]
    for i, axis in enumerate(axes):
        ras[axis] = int(img.shape[i])
    return ras[0], ras[1]


def common_slice_size(items: Sequence[dict]) -> tuple[int, int] | None:
    """The largest in-plane size of the items' images (RAS), when they differ; ``None`` when all slices have one size.

    Training batches slices of different volumes: padding every slice to this size lets them stack.
    """
    images = [item["image"][0] if isinstance(item["image"], (list, tuple)) else item["image"] for item in items]
    sizes = {ras_slice_size(path) for path in images}
    if len(sizes) <= 1:
        return None
    return max(h for h, _ in sizes), max(w for _, w in sizes)


def split_cases(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split a list of cases into (train, validation), reproducibly for a seed.

    The permutation is MONAI's :class:`~monai.apps.DecathlonDataset` one (``np.random.RandomState(seed)``
    shuffling the indices of the list in file order, ``int(n * val_fraction)`` cases to validation), so
    the same seed gives the same split as ``DecathlonDataset``; the one difference is that at least one
    case goes to validation whenever ``val_fraction > 0`` and there are two or more cases.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    n = len(items)
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    n_val = int(n * val_fraction)
    if val_fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    val = [items[i] for i in indices[:n_val]]
    train = [items[i] for i in indices[n_val:]]
    return train, val


def _missing_error(missing: list[str], source: str) -> FileNotFoundError:
    shown = "\n  ".join(missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    return FileNotFoundError(f"{source}: {len(missing)} listed file(s) missing:\n  {shown}{more}")


def _with_case_ids(items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        item = dict(item)
        item.setdefault("case_id", case_id_from_path(item["image"]))
        out.append(item)
    return out


def read_msd_items(task_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """(training, test) items of ``task_dir/dataset.json`` with absolute paths and case ids; no file checks."""
    task_dir = Path(task_dir)
    meta = read_dataset_json(task_dir)
    json_path = task_dir / "dataset.json"
    try:
        training = _with_case_ids(load_decathlon_datalist(json_path, True, "training", base_dir=task_dir))
        test = meta.get("test") or []
        if test:
            test = _with_case_ids(load_decathlon_datalist(json_path, False, "test", base_dir=task_dir))
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{json_path}: malformed 'training'/'test' entries ({e!r}).") from None
    return training, test


def msd_datalists(
    task: str | TaskSpec, dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """Training/validation/test datalists of an MSD-layout task, split by volume (= patient).

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}`` of MONAI data dicts
        ``{"image": path, "label": path, "case_id": str}`` (test items have no label); absolute paths.

    Raises:
        FileNotFoundError: when dataset.json or any file it lists is missing (every missing file is named).
    """
    spec = get_task(task)
    task_dir = find_msd_task_dir(spec, dataset_dir)
    json_path = task_dir / "dataset.json"
    training, test = read_msd_items(task_dir)
    missing = []
    for item in training + test:
        for key in ("image", "label"):
            if key in item:
                for p in item[key] if isinstance(item[key], (list, tuple)) else [item[key]]:
                    if not os.path.isfile(p):
                        missing.append(str(p))
    if missing:
        raise _missing_error(missing, str(json_path))
    train, val = split_cases(training, val_fraction, seed)
    return {"train": train, "validation": val, "test": test}


def download_msd(task: str | TaskSpec, root_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Download and extract an MSD task into ``root_dir`` (skipped when it is already there).

    The URL and md5 are MONAI's (``DecathlonDataset.resource`` / ``.md5``); the tarball is kept as
    ``root_dir/<msd_task>.tar`` and checked against the md5 before extraction (an existing tarball is
    re-checked, not downloaded again).

    Raises:
        ValueError: (MONAI ``HashCheckError``) when the md5 does not match.

    Returns:
        the task folder ``root_dir/<msd_task>`` (holding dataset.json).
    """
    spec = get_task(task)
    if spec.kind != "msd":
        raise ValueError(f"{spec.name} is not a downloadable MSD task (MSD tasks: heart, brain, lung).")
    root = Path(root_dir)
    root.mkdir(parents=True, exist_ok=True)
    task_dir = root / spec.msd_task
    if (task_dir / "dataset.json").is_file():
        return task_dir
    # MONAI's primitives: download_url checks the md5 (HashCheckError) before moving the file into place.
    # (download_and_extract would first send a HEAD request through `requests`, which cannot open file://.)
    tar_path = root / f"{spec.msd_task}.tar"
    download_url(
        url=DecathlonDataset.resource[spec.msd_task],
        filepath=tar_path,
        hash_val=DecathlonDataset.md5[spec.msd_task],
        hash_type="md5",
        progress=progress,
    )
    extractall(filepath=tar_path, output_dir=root, file_type="tar", has_base=True)
    if not (task_dir / "dataset.json").is_file():
        raise RuntimeError(f"{root / (spec.msd_task + '.tar')}: extracted, but {task_dir / 'dataset.json'} is missing.")
    return task_dir

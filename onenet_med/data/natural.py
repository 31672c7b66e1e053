"""Natural-image adapters in MONAI data-dict form: PASCAL VOC 2012 and Oxford-IIIT Pet.

VOC 2012: ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}``;
labels are palette PNGs whose indices are the class ids (0..20) and 255 on object borders (void).

Oxford-IIIT Pet: ``images/*.jpg``, ``annotations/trimaps/*.png`` (1 pet, 2 background, 3 border),
``annotations/{trainval,test,list}.txt`` (lines ``<name> <class id 1..37> <species> <breed id>``).
``pets`` maps the trimap to 0 background, 1 pet, 2 border; ``petf`` gives pet and border pixels the
breed's class id (1..37) and background 0.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from onenet_med.data.msd import _missing_error, split_cases
from onenet_med.data.tasks import TaskSpec, get_task

__all__ = [
    "PetTrimapd",
    "find_pets_root",
    "find_voc_root",
    "pets_datalists",
    "pets_items",
    "read_pets_list",
    "voc_datalists",
    "voc_items",
]


def find_voc_root(dataset_dir: str | os.PathLike) -> Path:
    """The VOC2012 folder (holding ``ImageSets/Segmentation``) at or below ``dataset_dir``."""
    root = Path(dataset_dir)
    candidates = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    for cand in candidates:
        if (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise FileNotFoundError(
        f"No PASCAL VOC tree found: none of {', '.join(str(c / 'ImageSets' / 'Segmentation') for c in candidates)}"
        " exists."
    )


def find_pets_root(dataset_dir: str | os.PathLike) -> Path:
    """The Oxford-IIIT Pet folder (holding ``images/`` and ``annotations/``) at or below ``dataset_dir``."""
    root = Path(dataset_dir)
    candidates = [root, root / "oxford-iiit-pet"]
    for cand in candidates:
        if (cand / "annotations" / "trainval.txt").is_file() and (cand / "images").is_dir():
            return cand
    raise FileNotFoundError(
        "No Oxford-IIIT Pet tree found: none of "
        f"{', '.join(str(c / 'annotations' / 'trainval.txt') for c in candidates)}"
        " exists (with an images/ folder next to annotations/)."
    )


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found.")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip() and not line.startswith("#")]


def voc_items(root: str | os.PathLike) -> dict[str, list[dict]]:
    """Items of a VOC2012 folder per split (``train``, ``validation``, ``test`` when test.txt exists)."""
    root = Path(root)
    sets = root / "ImageSets" / "Segmentation"
    out: dict[str, list[dict]] = {}
    for split, fname, labelled in (
        ("train", "train.txt", True),
        ("validation", "val.txt", True),
        ("test", "test.txt", False),
    ):
        if not labelled and not (sets / fname).is_file():
            out[split] = []
            continue
        items = []
        for case in _read_ids(sets / fname):
            item = {"image": str(root / "JPEGImages" / f"{case}.jpg"), "case_id": case}
            if labelled:
                item["label"] = str(root / "SegmentationClass" / f"{case}.png")
            items.append(item)
        out[split] = items
    return out


def _check_missing(out: dict[str, list[dict]], source: Path) -> None:
    missing = [
        item[k]
        for items in out.values()
        for item in items
        for k in ("image", "label")
        if k in item and not os.path.isfile(item[k])
    ]
    if missing:
        raise _missing_error(missing, str(source))


def voc_datalists(
    task: str | TaskSpec, dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """VOC 2012 datalists: ``train.txt`` -> train, ``val.txt`` -> validation, ``test.txt`` (if present,
    images only: VOC test labels are not public) -> test. ``val_fraction``/``seed`` are unused (fixed split)."""
    del task, val_fraction, seed
    root = find_voc_root(dataset_dir)
    out = voc_items(root)
    _check_missing(out, root / "ImageSets" / "Segmentation")
    return out


def read_pets_list(path: str | os.PathLike) -> dict[str, int]:
    """``annotations/list.txt`` (or trainval/test.txt) -> ``{image name: class id 1..37}``.

    Raises:
        ValueError: on a malformed line or a class id outside 1..37 (naming file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    classes: dict[str, int] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            try:
                class_id = int(parts[1])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{lineno}: expected '<name> <class id> <species> <breed id>'.") from None
            if not 1 <= class_id <= 37:
                raise ValueError(f"{path}:{lineno}: class id {class_id} outside 1..37.")
            classes[parts[0]] = class_id
    return classes


def pets_items(root: str | os.PathLike) -> dict[str, list[dict]]:
    """Items of an Oxford-IIIT Pet folder per split (``trainval``, ``test``); no file checks.

    Items are ``{"image", "label" (trimap), "case_id", "class_id" (breed 1..37; list.txt when present)}``.
    """
    root = Path(root)
    ann = root / "annotations"
    list_file = ann / "list.txt"
    breeds = read_pets_list(list_file) if list_file.is_file() else {}
    out: dict[str, list[dict]] = {}
    for split, fname in (("trainval", "trainval.txt"), ("test", "test.txt")):
        if split == "test" and not (ann / fname).is_file():
            out[split] = []
            continue
        out[split] = [
            {
                "image": str(root / "images" / f"{case}.jpg"),
                "label": str(ann / "trimaps" / f"{case}.png"),
                "case_id": case,
                "class_id": breeds.get(case, class_id),
            }
            for case, class_id in read_pets_list(ann / fname).items()
        ]
    return out


def pets_datalists(
    task: str | TaskSpec, dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """Oxford-IIIT Pet datalists: ``trainval.txt`` split into train/validation by ``seed``, ``test.txt`` -> test.

    Items are ``{"image", "label" (trimap), "case_id", "class_id" (breed 1..37 from list.txt)}``.
    """
    get_task(task)
    root = find_pets_root(dataset_dir)
    out = pets_items(root)
    _check_missing(out, root / "annotations")
    train, val = split_cases(out["trainval"], val_fraction, seed)
    return {"train": train, "validation": val, "test": out["test"]}


class PetTrimapd(MapTransform):
    """Map Oxford-IIIT Pet trimap values (1 pet, 2 background, 3 border) to class labels.

    ``breed_key=None`` ("pets"): 0 background, 1 pet, 2 border. With ``breed_key`` ("petf"): background 0,
    pet and border pixels take ``data[breed_key]`` (1..37). Any other trimap value raises, naming the file.

    Args:
        keys: label keys.
        breed_key: data-dict key of the breed class id, or ``None`` for the 3-class trimap task.
    """

    def __init__(self, keys: KeysCollection, breed_key: str | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.breed_key = breed_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            trimap = d[key]
            values = trimap.as_tensor() if isinstance(trimap, MetaTensor) else torch.as_tensor(trimap)
            bad = ~((values == 1) | (values == 2) | (values == 3))
            if bool(bad.any()):
                name = getattr(trimap, "meta", {}).get("filename_or_obj", key)
                found = sorted({int(v) for v in torch.unique(values[bad])})[:10]
                raise ValueError(f"{name}: trimap values must be 1, 2 or 3; found {found}.")
            if self.breed_key is None:
                lut = torch.tensor([0, 1, 0, 2], dtype=torch.uint8)  # index = trimap value
            else:
                breed = int(d[self.breed_key])
                lut = torch.tensor([0, breed, 0, breed], dtype=torch.uint8)
            mapped = lut[values.long()]
            if isinstance(trimap, MetaTensor):
                mapped = MetaTensor(mapped, meta=trimap.meta, applied_operations=trimap.applied_operations)
            d[key] = mapped
        return d

"""Tiny synthetic dataset trees for the data tests: MSD tasks, PASCAL VOC, Oxford-IIIT Pet.

Every builder writes real files in the real layouts (NIfTI with affines, palette PNGs, JPEGs, split files)
and returns what the tests need to compute expected values by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from onenet_med.data.tasks import TaskSpec, get_task

# LPS-like affine (x and y flipped w.r.t. RAS): orientation to RAS must flip axes 0 and 1
LPS_AFFINE = np.diag([-1.5, -1.25, 2.0, 1.0])
LPS_AFFINE[:3, 3] = (30.0, 20.0, -10.0)


#: An MSD-layout task that no registered task describes (for the generic ``onenet_msd`` bundle): 2 MRI channels and
#: 3 classes with names of its own.
CUSTOM_TASK = TaskSpec(
    name="Task99_Custom",
    kind="msd",
    in_channels=2,
    num_classes=3,
    class_names=("background", "core", "rim"),
    modality="mri",
    channel_names=("T1", "T2"),
    msd_task="Task99_Custom",
    msd_name="Custom",
)


def volume_arrays(spec_name: str | TaskSpec, shape=(20, 24, 12), fg_slices=(3, 4), seed=0, box=None):
    """Synthetic (image, label) for a task: image (X, Y, Z) or (X, Y, Z, C) channels last like MSD files.

    MRI: positive values inside ``box`` (default: all but a 2-voxel rim) and exact zeros outside;
    CT: HU values in [-1100, 1100]. Label: foreground only on the slices ``fg_slices`` (a small square of
    class 1, and of every further class side by side).
    """
    spec = get_task(spec_name)
    rng = np.random.default_rng(seed)
    x, y, z = shape
    box = box or (slice(2, x - 2), slice(2, y - 2), slice(None))
    if spec.modality == "ct":
        image = rng.uniform(-1100, 1100, size=(*shape, spec.in_channels)).astype(np.float32)
    else:
        image = np.zeros((*shape, spec.in_channels), np.float32)
        scales = 100.0 * (1 + np.arange(spec.in_channels))
        image[box] = rng.uniform(1, 2, size=image[box].shape).astype(np.float32) * scales
    label = np.zeros(shape, np.uint8)
    for k in [k for k in fg_slices if k < z] or [z // 2]:
        for c in range(1, spec.num_classes):
            label[3 + 2 * (c - 1) : 5 + 2 * (c - 1), 5:8, k] = c
    if spec.in_channels == 1:
        image = image[..., 0]
    return image, label


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine=LPS_AFFINE) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def make_msd_task(
    root: str | os.PathLike,
    spec_name: str | TaskSpec = "heart",
    n_train: int = 3,
    n_test: int = 1,
    shape=(20, 24, 12),
    fg_slices=(3, 4),
    affine=LPS_AFFINE,
    prefix: str = "case",
) -> Path:
    """An MSD task folder ``root/<msd_task>`` with ``n_train`` labelled and ``n_test`` unlabelled volumes."""
    spec = get_task(spec_name)
    task_dir = Path(root) / spec.msd_task
    training, test = [], []
    for i in range(n_train + n_test):
        image, label = volume_arrays(spec_name, shape, fg_slices, seed=i)
        name = f"{prefix}_{i:03d}.nii.gz"
        if i < n_train:
            save_nifti(task_dir / "imagesTr" / name, image, affine)
            save_nifti(task_dir / "labelsTr" / name, label, affine)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            save_nifti(task_dir / "imagesTs" / name, image, affine)
            test.append(f"./imagesTs/{name}")
    meta = {
        "name": spec.msd_name,
        "description": "synthetic",
        "reference": "tests",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "4D" if spec.in_channels > 1 else "3D",
        "modality": {str(i): n for i, n in enumerate(spec.channel_names)},
        "labels": {str(i): n for i, n in enumerate(spec.class_names)},
        "numTraining": n_train,
        "numTest": n_test,
        "training": training,
        "test": test,
    }
    with open(task_dir / "dataset.json", "w") as f:
        json.dump(meta, f)
    return task_dir


VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]


def voc_label(h: int, w: int, cls: int, top: int = 4, left: int = 5, size: int = 8) -> np.ndarray:
    """Background 0, a ``size`` square of class ``cls`` with a 1-pixel void (255) border around it."""
    lab = np.zeros((h, w), np.uint8)
    lab[top - 1 : top + size + 1, left - 1 : left + size + 1] = 255
    lab[top : top + size, left : left + size] = cls
    return lab


def save_palette_png(path, label: np.ndarray) -> None:
    im = Image.fromarray(label, mode="P")
    im.putpalette(VOC_PALETTE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path)


def make_voc_tree(root: str | os.PathLike, sizes=((24, 32), (32, 20), (28, 28), (20, 36))) -> Path:
    """``root/VOCdevkit/VOC2012`` with JPEGs, palette-PNG labels (void borders) and train/val split files.

    Image i has size ``sizes[i]`` (H, W) and class ``i + 1``; the first half is train, the rest val.
    """
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(len(sizes))]
    for i, (case, (h, w)) in enumerate(zip(ids, sizes)):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{case}.jpg")
        save_palette_png(voc / "SegmentationClass" / f"{case}.png", voc_label(h, w, i + 1))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    half = len(ids) // 2
    (sets / "train.txt").write_text("\n".join(ids[:half]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[half:]) + "\n")
    return voc


PETS_CASES = [  # name, class id, species, breed id
    ("Abyssinian_1", 1, 1, 1),
    ("Abyssinian_2", 1, 1, 1),
    ("american_bulldog_10", 2, 2, 1),
    ("Bengal_3", 6, 1, 2),
    ("yorkshire_terrier_7", 37, 2, 25),
    ("pug_5", 26, 2, 18),
]


def pets_trimap(h: int, w: int) -> np.ndarray:
    """2 background, a square of 1 (pet) with a 1-pixel border of 3."""
    t = np.full((h, w), 2, np.uint8)
    t[3:13, 4:14] = 3
    t[4:12, 5:13] = 1
    return t


def make_pets_tree(root: str | os.PathLike, size=(24, 30), grey_first: bool = True) -> Path:
    """``root/oxford-iiit-pet`` with JPEGs (the first one greyscale), trimaps and split/list files."""
    pets = Path(root) / "oxford-iiit-pet"
    (pets / "images").mkdir(parents=True)
    (pets / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(1)
    h, w = size
    for i, (name, *_rest) in enumerate(PETS_CASES):
        if i == 0 and grey_first:
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L").save(
                pets / "images" / f"{name}.jpg"
            )
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(pets / "images" / f"{name}.jpg")
        Image.fromarray(pets_trimap(h, w), mode="L").save(pets / "annotations" / "trimaps" / f"{name}.png")
    lines = [f"{n} {c} {s} {b}" for n, c, s, b in PETS_CASES]
    header = (
        "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n"
    )
    (pets / "annotations" / "list.txt").write_text(header + "\n".join(lines) + "\n")
    (pets / "annotations" / "trainval.txt").write_text("\n".join(lines[:4]) + "\n")
    (pets / "annotations" / "test.txt").write_text("\n".join(lines[4:]) + "\n")
    return pets

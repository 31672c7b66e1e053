"""Task registry: one :class:`TaskSpec` per dataset the package knows (``heart brain lung voc pets petf demo``).

A task spec is the single place that says what a dataset looks like (channels, classes, modality, folder
layout) and how it is prepared by default (in-plane size, cache mode, CT window). Transforms, datalists,
the data checker, the bundles and the CLI all read it from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GENERIC_MSD", "IGNORE_INDEX", "TaskSpec", "get_task", "list_tasks", "register_task"]

#: Label value ignored by losses and metrics (PASCAL VOC object borders).
IGNORE_INDEX = 255


@dataclass(frozen=True)
class TaskSpec:
    """Description of one segmentation task.

    Args:
        name: registry name (``"heart"``, ``"voc"``, ...).
        kind: dataset layout: ``"msd"`` (Medical Segmentation Decathlon), ``"voc"`` (PASCAL VOC 2012),
            ``"pets"`` (Oxford-IIIT Pet) or ``"demo"`` (the embedded MNI152 tissue task, MSD layout).
        in_channels: image channels the network receives (Brain: 4 MRI sequences; natural images: RGB).
        num_classes: output classes including background (the ignore label 255 is not a class).
        class_names: one name per class, index = label value.
        modality: ``"mri"``, ``"ct"`` or ``"rgb"``; selects the intensity normalisation.
        channel_names: one name per input channel.
        msd_task: MSD folder name (``"Task02_Heart"``) for ``msd``/``demo`` tasks, else ``None``.
        msd_name: the ``name`` field of the task's ``dataset.json`` (used to recognise a renamed folder).
        spatial_size: default in-plane size. ``None`` keeps the native resolution and pads every slice to a
            multiple of ``divisible_k``; an int or pair resizes (image bilinear, label nearest).
        min_slice_size: training slices are padded to at least this in-plane size, so that volumes of
            different size (e.g. after cropping to the foreground) still batch together.
        divisible_k: pad in-plane sizes to a multiple of this (32 = 2**5 serves 4- and 5-level networks).
        crop_foreground: crop each volume to the bounding box of its non-zero image voxels before caching
            (Brain: skull-stripped MRI, shrinks the cache about 2.5x without touching any labelled voxel).
        ct_window: (min, max) Hounsfield units clipped and scaled to [0, 1] for CT tasks.
        intensity_stats: MRI only: fixed (mean, std) for the z-score over non-zero voxels, instead of each volume's
            own statistics. For data whose cases are parts of one image (the demo's slabs): a volume's own
            statistics change with its tissue mix, which shifts one tissue's normalised intensity between cases.
        cache: default cache for the training set: ``"memory"`` (CacheDataset) or ``"disk"``
            (PersistentDataset).
        ignore_index: label value that losses and metrics ignore, or ``None`` when every pixel is labelled.
        description: one line for humans (docs, ``data check`` output).
        network: default network (registry name) of the task's bundle: ``onenet_ed4`` where local features
            decide (MSD, demo), ``onenet_e4`` where image-wide context matters (VOC, Pets).
        batch_size: default training batch size of the task's bundle (paper: 32 or 64 on a 24 GB GPU).
        dataset_folder: default dataset folder under ``data/`` (bundles' ``dataset_dir``).
    """

    name: str
    kind: str
    in_channels: int
    num_classes: int
    class_names: tuple[str, ...]
    modality: str
    channel_names: tuple[str, ...] = ()
    msd_task: str | None = None
    msd_name: str | None = None
    spatial_size: int | tuple[int, int] | None = None
    min_slice_size: tuple[int, int] | None = None
    divisible_k: int = 32
    crop_foreground: bool = False
    ct_window: tuple[float, float] | None = None
    intensity_stats: tuple[float, float] | None = None
    cache: str = "memory"
    ignore_index: int | None = None
    description: str = ""
    network: str = "onenet_ed4"
    batch_size: int = 32
    dataset_folder: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("msd", "voc", "pets", "demo"):
            raise ValueError(f"TaskSpec {self.name!r}: kind must be msd|voc|pets|demo, got {self.kind!r}.")
        if self.modality not in ("mri", "ct", "rgb"):
            raise ValueError(f"TaskSpec {self.name!r}: modality must be mri|ct|rgb, got {self.modality!r}.")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"TaskSpec {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes."
            )
        if self.channel_names and len(self.channel_names) != self.in_channels:
            raise ValueError(
                f"TaskSpec {self.name!r}: {len(self.channel_names)} channel names for {self.in_channels} channels."
            )
        if self.modality == "ct" and self.ct_window is None:
            raise ValueError(f"TaskSpec {self.name!r}: CT tasks need ct_window.")
        if self.intensity_stats is not None and (self.modality != "mri" or not self.intensity_stats[1] > 0):
            raise ValueError(
                f"TaskSpec {self.name!r}: intensity_stats (mean, std > 0) are for MRI, got {self.intensity_stats}."
            )
        if self.cache not in ("memory", "disk", "none"):
            raise ValueError(f"TaskSpec {self.name!r}: cache must be memory|disk|none, got {self.cache!r}.")

    @property
    def is_volume(self) -> bool:
        """True for tasks stored as 3D volumes (MSD layout) and sliced to 2D."""
        return self.kind in ("msd", "demo")

    def replace(self, **changes) -> TaskSpec:
        """A copy with some fields changed (e.g. a generic MSD task built from a dataset.json)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-friendly values (tuples become lists); :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """The spec :meth:`to_dict` wrote (JSON lists back to tuples); unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TaskSpec: unknown fields {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


# Oxford-IIIT Pet breeds in the order of their class ids 1..37 in annotations/list.txt
PET_BREEDS: tuple[str, ...] = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
    "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
    "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
    "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
    "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu",
    "Siamese", "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)  # fmt: skip

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_RGB = ("red", "green", "blue")

_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (name must be new) and return it."""
    if spec.name in _TASKS:
        raise ValueError(f"Task {spec.name!r} is already registered.")
    _TASKS[spec.name] = spec
    return spec


register_task(
    TaskSpec(
        name="heart",
        kind="msd",
        in_channels=1,
        num_classes=2,
        class_names=("background", "left atrium"),
        modality="mri",
        channel_names=("MRI",),
        msd_task="Task02_Heart",
        msd_name="LeftAtrium",
        spatial_size=None,  # 320x320 native, already a multiple of 32
        cache="memory",
        description="MSD Task02 Heart: mono-modal MRI, left atrium (20 labelled volumes, 320x320x~110).",
    )
)
register_task(
    TaskSpec(
        name="brain",
        kind="msd",
        in_channels=4,
        num_classes=4,
        class_names=("background", "edema", "non-enhancing tumour", "enhancing tumour"),
        modality="mri",
        channel_names=("FLAIR", "T1w", "T1gd", "T2w"),
        msd_task="Task01_BrainTumour",
        msd_name="BRATS",
        spatial_size=None,  # 240x240 native; after the foreground crop slices are padded to 256x256
        min_slice_size=(256, 256),
        crop_foreground=True,
        cache="disk",
        description="MSD Task01 BrainTumour: 4-channel MRI (FLAIR, T1w, T1gd, T2w), 484 labelled volumes.",
    )
)
register_task(
    TaskSpec(
        name="lung",
        kind="msd",
        in_channels=1,
        num_classes=2,
        class_names=("background", "tumour"),
        modality="ct",
        channel_names=("CT",),
        msd_task="Task06_Lung",
        msd_name="Lung",
        spatial_size=None,  # 512x512 native: tumours are a few mm, halving the resolution loses them
        ct_window=(-1000.0, 500.0),
        cache="disk",
        batch_size=16,
        description="MSD Task06 Lung: CT, lung tumour (63 labelled volumes, 512x512x~250).",
    )
)
register_task(
    TaskSpec(
        name="demo",
        kind="demo",
        in_channels=1,
        num_classes=4,
        class_names=("background", "CSF/other brain", "grey matter", "white matter"),
        modality="mri",
        channel_names=("T1w",),
        msd_task="Task00_MNI152Tissue",
        msd_name="MNI152Tissue",
        spatial_size=None,  # 197x233 native slices padded to 224x256: resizing costs Dice (SPEC 6a)
        # the slabs are parts of one template: z-score them all with its whole-brain statistics (non-zero T1
        # voxels: mean 176.76, std 36.00). Each slab's own statistics shifted the middle (white-matter rich) slab
        # by ~0.3 std against the others and cost the held-out Dice 5-8 points (issue 6).
        intensity_stats=(176.76, 36.0),
        cache="memory",
        description="Embedded demo: MNI152 2009a T1 template, tissue labels from nilearn's GM/WM maps.",
    )
)
#: The generic MSD-layout task of the ``onenet_msd`` bundle. Its channels and classes here are placeholders: a run reads
#: the real ones from the dataset's dataset.json (:func:`onenet_med.data.msd.spec_from_dataset_json`) or, for a
#: trained model, from the task saved beside its checkpoint.
GENERIC_MSD = register_task(
    TaskSpec(
        name="msd",
        kind="msd",
        in_channels=1,
        num_classes=2,
        class_names=("background", "foreground"),
        modality="mri",
        channel_names=("image",),
        spatial_size=None,
        cache="memory",
        description="Any MSD-layout task: channels from dataset.json 'modality', classes from its 'labels'.",
    )
)
register_task(
    TaskSpec(
        name="voc",
        network="onenet_e4",
        kind="voc",
        in_channels=3,
        num_classes=21,
        class_names=VOC_CLASSES,
        modality="rgb",
        channel_names=_RGB,
        spatial_size=256,
        cache="memory",
        ignore_index=IGNORE_INDEX,
        dataset_folder="VOCdevkit/VOC2012",
        description="PASCAL VOC 2012 segmentation: 20 object classes + background, 255 = void (ignored).",
    )
)
register_task(
    TaskSpec(
        name="pets",
        network="onenet_e4",
        kind="pets",
        in_channels=3,
        num_classes=3,
        class_names=("background", "pet", "border"),
        modality="rgb",
        channel_names=_RGB,
        spatial_size=256,
        cache="memory",
        dataset_folder="oxford-iiit-pet",
        description="Oxford-IIIT Pet trimaps: background, pet, border.",
    )
)
register_task(
    TaskSpec(
        name="petf",
        network="onenet_e4",
        kind="pets",
        in_channels=3,
        num_classes=38,
        class_names=("background", *PET_BREEDS),
        modality="rgb",
        channel_names=_RGB,
        spatial_size=256,
        cache="memory",
        dataset_folder="oxford-iiit-pet",
        description="Oxford-IIIT Pet breeds: background + 37 breeds (pet and border pixels take the breed).",
    )
)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Return the registered :class:`TaskSpec` called ``name`` (a TaskSpec is returned unchanged)."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).lower()
    if key not in _TASKS:
        raise KeyError(f"Unknown task {name!r}; known tasks: {', '.join(list_tasks())}.")
    return _TASKS[key]


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return list(_TASKS)

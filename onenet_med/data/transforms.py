"""The transform chains: one per task, built by :func:`get_transforms` and used by bundles, CLI and notebooks.

Volumes (MSD tasks and the demo)::

    LoadImaged -> EnsureChannelFirstd -> Orientationd("RAS") [-> CropForegroundd (Brain)]
      -> normalise (MRI: z-score over non-zero voxels per channel, with the task's fixed ``intensity_stats`` when it
         has them (demo); CT: clip a HU window, scale to [0, 1])
      [-> Resized in-plane when a spatial_size is given] -> label as uint8
    train:    -> SliceForegroundd (per-slice foreground flags) -> SliceMajord ((C, D, H, W), cached)
              -> RandSliceByPosNegd (axial slices, positive/negative balanced; first random step)
              -> pad in-plane at the end (SpatialPadd min size, DivisiblePadd k) -> flips, intensity scale/shift
              -> image (C, H, W) float32, label (1, H, W) int64
    validate: -> DivisiblePadd (H, W to a multiple of k) -> image (C, H, W, D), label (1, H, W, D) int64
    infer:    as validate without label; every spatial step is invertible (monai Invertd)

Natural images (VOC, Pets)::

    LoadImaged (PIL, RGB) -> EnsureChannelFirstd [-> PetTrimapd] -> [0, 1] -> ImageNet mean/std
      -> Resized (image bilinear, label nearest-exact; 255 void survives) [-> train: horizontal flip]

Everything before the first random transform is deterministic, so CacheDataset / PersistentDataset cache
the volume-level work and training only slices, pads and flips.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    Compose,
    CropForegroundd,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
    SpatialPadd,
)
from monai.transforms.traits import MultiSampleTrait

from onenet_med.data.natural import PetTrimapd
from onenet_med.data.tasks import TaskSpec, get_task

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODES",
    "RandSliceByPosNegd",
    "SliceForegroundd",
    "SliceMajord",
    "get_transforms",
    "label_to_int64",
    "resolve_spatial_size",
]

MODES = ("train", "validate", "infer")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class SliceForegroundd(MapTransform):
    """Store which slices along the last axis contain foreground: ``d[f"{key}_fg_slices"]`` = bool (D,).

    Deterministic and cheap to keep in a cache (one flag per slice), unlike per-voxel foreground indices.

    Args:
        keys: label keys, each (1, H, W, D).
        ignore_index: label value that is not foreground (e.g. 255), or ``None``.
    """

    def __init__(self, keys: KeysCollection, ignore_index: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.ignore_index = ignore_index

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_fg_slices"] = _fg_slices(d[key], self.ignore_index)
        return d


def _fg_slices(label, ignore_index: int | None, axis: int = -1) -> torch.Tensor:
    lab = torch.as_tensor(label).movedim(axis, -1)
    fg = lab > 0
    if ignore_index is not None:
        fg &= lab != ignore_index
    return fg.reshape(-1, lab.shape[-1]).any(0).cpu()


class SliceMajord(MapTransform):
    """Store volumes slice-major: (C, H, W, D) -> contiguous (C, D, H, W) plain tensors (train cache only).

    One axial slice is then one contiguous block: copying it is ~30x faster than gathering every D-th value,
    and a memory-mapped disk cache reads only the pages of the slices drawn (see ``get_dataset``).
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            vol = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
            d[key] = vol.movedim(-1, 1).contiguous()
        return d


class RandSliceByPosNegd(Randomizable, MapTransform, MultiSampleTrait):
    """Sample ``num_samples`` axial slices (last axis) per volume, balancing positive and negative slices.

    Each sample is a positive slice (label has foreground) with probability ``pos / (pos + neg)``, else a
    negative slice (no foreground); when a volume has no slice of the wanted kind the other kind is used.
    Foreground flags come from :class:`SliceForegroundd` when present (cached), else from the label.
    Compared with ``RandCropByPosNegLabeld`` with an (H, W, 1) roi, this needs no per-voxel foreground
    index arrays (about 90 MB per Heart volume to cache, or a full-volume scan at every draw) and gives
    slice-level balance (a "negative" voxel of RandCropByPosNegLabeld often lies on a positive slice).

    Args:
        keys: keys of (C, H, W, D) tensors to slice into (C, H, W) (the slices are copies).
        label_key: the label used for the positive/negative decision.
        num_samples: slices returned per call (a list of data dicts; MONAI's collate flattens it).
        pos: weight of positive slices.
        neg: weight of negative slices.
        ignore_index: label value that is not foreground, or ``None``.
        slice_major: volumes are (C, D, H, W) (from :class:`SliceMajord`) instead of (C, H, W, D).
    """

    backend = [torch.Tensor]

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        num_samples: int = 4,
        pos: float = 1.0,
        neg: float = 1.0,
        ignore_index: int | None = None,
        slice_major: bool = False,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.slice_major = slice_major
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if pos < 0 or neg < 0 or pos + neg == 0:
            raise ValueError(f"pos and neg must be >= 0 and not both 0, got pos={pos}, neg={neg}.")
        self.label_key = label_key
        self.num_samples = num_samples
        self.pos_ratio = pos / (pos + neg)
        self.ignore_index = ignore_index
        self._indices: list[int] = []

    def randomize(self, fg_slices: np.ndarray) -> None:
        pos_idx = np.flatnonzero(fg_slices)
        neg_idx = np.flatnonzero(~fg_slices)
        out = []
        for _ in range(self.num_samples):
            want_pos = self.R.rand() < self.pos_ratio
            pool = pos_idx if (want_pos and len(pos_idx)) or not len(neg_idx) else neg_idx
            out.append(int(pool[self.R.randint(len(pool))]))
        self._indices = out

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        d = dict(data)
        fg_key = f"{self.label_key}_fg_slices"
        fg = d.pop(fg_key, None)
        if fg is None:
            fg = _fg_slices(d[self.label_key], self.ignore_index, axis=1 if self.slice_major else -1)
        self.randomize(np.asarray(torch.as_tensor(fg).cpu().numpy(), dtype=bool))
        samples = []
        for z in self._indices:
            sample = dict(d)
            for key in self.key_iterator(d):
                vol = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
                sample[key] = (vol[:, z] if self.slice_major else vol[..., z]).clone()
            sample["slice_index"] = z
            samples.append(sample)
        return samples


def label_to_int64(data: dict, key: str = "label") -> dict:
    """Cast ``data[key]`` to int64 (losses index with it).

    A plain function on purpose: CacheDataset/PersistentDataset stop caching at the first step that is not a
    MONAI ``Transform``, so cached volumes keep uint8 labels (1 byte/voxel instead of 8).
    """
    if key in data:
        data = dict(data)
        data[key] = data[key].to(torch.int64)
    return data


def _to_rgb(image):
    """PIL converter: every natural image becomes 3-channel RGB (grey, RGBA, CMYK and palette JPEGs exist)."""
    return image.convert("RGB")


def resolve_spatial_size(spec: TaskSpec, spatial_size) -> tuple[int, int] | None:
    """``"task"`` -> the task default; int -> (n, n); pair -> tuple; ``None`` -> native resolution."""
    if isinstance(spatial_size, str):
        if spatial_size != "task":
            raise ValueError(f"spatial_size must be an int, a pair, None or 'task', got {spatial_size!r}.")
        spatial_size = spec.spatial_size
    if spatial_size is None:
        return None
    if isinstance(spatial_size, int):
        spatial_size = (spatial_size, spatial_size)
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"spatial_size must be one or two positive ints, got {spatial_size!r}.")
    return size


def _normalise(spec: TaskSpec, key: str) -> list:
    if spec.modality == "mri" and spec.intensity_stats is not None:
        mean, std = spec.intensity_stats
        return [NormalizeIntensityd(key, subtrahend=mean, divisor=std, nonzero=True)]
    if spec.modality == "mri":
        return [NormalizeIntensityd(key, nonzero=True, channel_wise=True)]
    if spec.modality == "ct":
        lo, hi = spec.ct_window
        return [ScaleIntensityRanged(key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)]
    return [
        ScaleIntensityRanged(key, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        NormalizeIntensityd(key, subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True),
    ]


def _resize(keys: Sequence[str], image_key: str, size: Sequence[int], volume: bool) -> list:
    full = (*size, -1) if volume else tuple(size)  # -1 keeps the slice axis
    out = [Resized(image_key, spatial_size=full, mode="trilinear" if volume else "bilinear")]
    out += [Resized(k, spatial_size=full, mode="nearest-exact") for k in keys if k != image_key]
    return out


def _pad(keys: Sequence[str], image_key: str, k: int, volume: bool, label_pad: int, min_size=None) -> list:
    """Pad at the end of H and W (``x[..., :H, :W]`` is the original), images with 0, labels with ``label_pad``."""
    out = []
    lab = [key for key in keys if key != image_key]
    if min_size is not None:
        size = (*min_size, -1) if volume else tuple(min_size)
        out.append(SpatialPadd(image_key, spatial_size=size, method="end"))
        out += [SpatialPadd(key, spatial_size=size, method="end", value=label_pad) for key in lab]
    kk = (k, k, 1) if volume else k
    out.append(DivisiblePadd(image_key, k=kk, method="end"))
    out += [DivisiblePadd(key, k=kk, method="end", value=label_pad) for key in lab]
    return out


def get_transforms(
    task: str | TaskSpec,
    mode: str,
    spatial_size: int | Sequence[int] | None | str = "task",
    *,
    num_samples: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    flips: bool = True,
    intensity_aug: bool = True,
    crop_foreground: bool | None = None,
    divisible_k: int | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> Compose:
    """The transform chain of ``task`` for ``mode`` (``"train"``, ``"validate"`` or ``"infer"``).

    Args:
        task: task name or spec (``heart brain lung voc pets petf demo``).
        mode: ``"train"`` yields 2D samples: image (C, H, W) float32, label (1, H, W) int64 (volumes give
            ``num_samples`` slices per item as a list). ``"validate"`` keeps volumes: image (C, H, W, D),
            label (1, H, W, D) int64 (natural images: (C, H, W) / (1, H, W)). ``"infer"``: image only,
            invertible with ``monai.transforms.Invertd`` back to the input file's geometry.
        spatial_size: in-plane size. ``"task"`` -> the task default (``TaskSpec.spatial_size``); int or pair
            -> resize (image bilinear, label nearest-exact); ``None`` -> native resolution, padded to a
            multiple of ``divisible_k`` (natural images of mixed sizes then only batch with batch size 1).
        num_samples: slices drawn per volume per visit (train, volumes).
        pos: weight of slices with foreground (train, volumes).
        neg: weight of slices without foreground (train, volumes).
        flips: random flips in training (volumes: both in-plane axes; natural images: horizontal).
        intensity_aug: random intensity scale and shift (+-10%) in training (volumes).
        crop_foreground: crop volumes to the non-zero image box (default: the task's, when not resizing).
        divisible_k: pad H and W to a multiple of this (default: the task's, 32).
        image_key: data-dict key of the image.
        label_key: data-dict key of the label.

    Returns:
        a :class:`monai.transforms.Compose`.
    """
    spec = get_task(task)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    size = resolve_spatial_size(spec, spatial_size)
    k = int(divisible_k or spec.divisible_k)
    keys = [image_key] if mode == "infer" else [image_key, label_key]
    label_pad = spec.ignore_index if spec.ignore_index is not None else 0
    if spec.is_volume:
        if crop_foreground is None:
            crop_foreground = spec.crop_foreground and size is None
        elif crop_foreground and size is not None:
            raise ValueError("crop_foreground with a spatial_size would rescale each volume differently; pick one.")
        return _volume_chain(
            spec,
            mode,
            keys,
            image_key,
            label_key,
            size,
            k,
            label_pad,
            crop_foreground,
            num_samples,
            pos,
            neg,
            flips,
            intensity_aug,
        )
    return _natural_chain(spec, mode, keys, image_key, label_key, size, k, label_pad, flips)


def _volume_chain(
    spec, mode, keys, image_key, label_key, size, k, label_pad, crop, num_samples, pos, neg, flips, intensity_aug
) -> Compose:
    t: list = [
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=_RAS_LABELS),
    ]
    if crop:
        t.append(
            CropForegroundd(keys, source_key=image_key, allow_smaller=True, start_coord_key=None, end_coord_key=None)
        )
    t += _normalise(spec, image_key)
    if size is not None:
        t += _resize(keys, image_key, size, volume=True)
    if mode == "infer":
        t += _pad(keys, image_key, k, volume=True, label_pad=label_pad)
        return Compose(t)
    t.append(EnsureTyped(label_key, dtype=torch.uint8))
    if mode == "validate":
        t += _pad(keys, image_key, k, volume=True, label_pad=label_pad)
        t.append(label_to_int64)
        return Compose(t)
    t.append(SliceForegroundd(label_key, ignore_index=spec.ignore_index))
    t.append(SliceMajord(keys))
    t.append(
        RandSliceByPosNegd(
            keys,
            label_key=label_key,
            num_samples=num_samples,
            pos=pos,
            neg=neg,
            ignore_index=spec.ignore_index,
            slice_major=True,
        )
    )
    t += _pad(
        keys, image_key, k, volume=False, label_pad=label_pad, min_size=spec.min_slice_size if size is None else None
    )
    if flips:
        t += [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1)]
    if intensity_aug:
        t += [
            RandScaleIntensityd(image_key, factors=0.1, prob=0.5),
            RandShiftIntensityd(image_key, offsets=0.1, prob=0.5),
        ]
    t += [
        EnsureTyped(image_key, dtype=torch.float32, track_meta=False),
        EnsureTyped(label_key, dtype=torch.int64, track_meta=False),
    ]
    return Compose(t)


def _natural_chain(spec, mode, keys, image_key, label_key, size, k, label_pad, flips) -> Compose:
    t: list = [LoadImaged(image_key, reader=PILReader(converter=_to_rgb, reverse_indexing=False), image_only=True)]
    if mode != "infer":
        t.append(LoadImaged(label_key, reader=PILReader(reverse_indexing=False), image_only=True))
    t.append(EnsureChannelFirstd(keys))
    if mode != "infer" and spec.kind == "pets":
        t.append(PetTrimapd(label_key, breed_key="class_id" if spec.num_classes > 3 else None))
    t += _normalise(spec, image_key)
    if size is not None:
        t += _resize(keys, image_key, size, volume=False)
    else:
        t += _pad(keys, image_key, k, volume=False, label_pad=label_pad)
    if mode == "infer":
        return Compose(t)
    t.append(EnsureTyped(label_key, dtype=torch.uint8))
    if mode == "train" and flips:
        t.append(RandFlipd(keys, prob=0.5, spatial_axis=1))
    t.append(label_to_int64)
    return Compose(t)

"""Datalists for every task and the cached dataset factory."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence

import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

from onenet_med.data.msd import msd_datalists
from onenet_med.data.natural import pets_datalists, voc_datalists
from onenet_med.data.tasks import TaskSpec, get_task
from onenet_med.switches import SwitchError, switch

__all__ = ["CACHE_MODES", "MmapPersistentDataset", "cache_mode", "get_datalists", "get_dataset"]

CACHE_MODES = ("memory", "disk", "none")


def cache_mode(value: str | bool | int, default: str) -> str:
    """The cache mode meant by the bundle setting ``cache``: a mode of :data:`CACHE_MODES`, or a switch
    (``false``/``0`` = ``"none"``, ``true``/``1`` = ``default``, the task's mode), spelled as
    :func:`onenet_med.switch` accepts it.

    Raises:
        ValueError: neither a mode nor a switch value (the message names ``cache``).
    """
    if isinstance(value, str) and value in CACHE_MODES:
        return value
    try:
        on = switch(value, "cache")
    except SwitchError:
        raise ValueError(
            f"cache takes one of {', '.join(CACHE_MODES)} or a switch value (true, false, True, False, 1, 0); "
            f"got {value!r}"
        ) from None
    return default if on else "none"


def get_datalists(
    task: str | TaskSpec, dataset_dir: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """Train / validation / test datalists of ``task`` read from ``dataset_dir``.

    * MSD tasks and the demo: ``dataset_dir`` is the task folder (holding dataset.json) or its parent;
      ``training`` is split by volume (= patient) with ``np.random.RandomState(seed)`` exactly like MONAI's
      DecathlonDataset; test = ``imagesTs`` (no labels).
    * VOC: ``ImageSets/Segmentation/train.txt`` / ``val.txt`` (fixed split; ``val_fraction`` unused).
    * Pets: ``annotations/trainval.txt`` split into train/validation by ``seed``; test = ``test.txt``.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``; items are MONAI data dicts
        ``{"image": path, "label": path, "case_id": str}`` (+ ``"class_id"`` for Pets).

    Raises:
        FileNotFoundError: naming dataset.json / split files / every listed file that is missing.
    """
    spec = get_task(task)
    if spec.is_volume:
        return msd_datalists(spec, dataset_dir, val_fraction, seed)
    if spec.kind == "voc":
        return voc_datalists(spec, dataset_dir, val_fraction, seed)
    return pets_datalists(spec, dataset_dir, val_fraction, seed)


def get_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int = 0,
    copy_cache: bool | None = None,
) -> Dataset:
    """A MONAI dataset over ``data`` that caches the deterministic part of ``transform``.

    Args:
        data: data dicts (from :func:`get_datalists`); named like MONAI's ``Dataset(data=...)`` so that bundle
            configs expose the ``train#dataset#data`` id.
        transform: the chain (from :func:`~onenet_med.data.transforms.get_transforms`).
        cache: ``"memory"`` -> CacheDataset (``cache_rate`` of the items in RAM); ``"disk"`` ->
            :class:`MmapPersistentDataset` under ``cache_dir`` (the cache key includes the transform, so
            changing a transform option never reuses stale files); ``"none"`` -> plain Dataset.
        cache_dir: folder of the disk cache (required for ``"disk"``).
        cache_rate: fraction of items held in memory (``"memory"`` only; the rest is computed each time).
        num_workers: threads filling the memory cache (0 -> 1).
        copy_cache: deep-copy cached items before the random transforms. ``None`` -> no copy when the
            first random step is :class:`~onenet_med.data.transforms.RandSliceByPosNegd`, which copies the
            slices it returns (saves a whole-volume copy per draw), else copy.

    Returns:
        a :class:`monai.data.Dataset`.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")
    data = list(data)
    if cache == "none":
        return Dataset(data, transform)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir.")
        os.makedirs(cache_dir, exist_ok=True)
        return MmapPersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
    if copy_cache is None:
        copy_cache = not _first_random_copies(transform)
    return CacheDataset(
        data,
        transform,
        cache_rate=cache_rate,
        num_workers=max(1, int(num_workers)),
        progress=False,
        copy_cache=copy_cache,
    )


class MmapPersistentDataset(PersistentDataset):
    """MONAI PersistentDataset whose cache hits are memory-mapped (``torch.load(mmap=True)``).

    With the slice-major training cache (:class:`~onenet_med.data.transforms.SliceMajord`) a draw of a few
    slices reads only their pages instead of the whole volume (330 MB for a Lung CT). Misses, writing and
    corrupt-file handling are MONAI's.
    """

    def _cachecheck(self, item_transformed):
        if self.cache_dir is not None:
            name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
            hashfile = self.cache_dir / f"{name}.pt"
            if hashfile.is_file():
                try:
                    return torch.load(hashfile, weights_only=self.weights_only, mmap=True)
                except (RuntimeError, pickle.UnpicklingError, OSError):
                    pass  # MONAI's path below recomputes corrupt files
        return super()._cachecheck(item_transformed)


def _first_random_copies(transform: Callable) -> bool:
    from monai.transforms import Compose, RandomizableTrait, Transform

    from onenet_med.data.transforms import RandSliceByPosNegd

    if not isinstance(transform, Compose):
        return False
    for t in transform.flatten().transforms:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            return isinstance(t, RandSliceByPosNegd)
    return False

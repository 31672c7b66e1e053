import subprocess
import sys

import pytest
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset

from onenet_med.data import get_datalists, get_dataset, get_transforms
from onenet_med.data.datasets import MmapPersistentDataset, cache_mode
from tests.data_trees import make_msd_task


@pytest.fixture
def lists(tmp_path):
    make_msd_task(tmp_path, "heart", n_train=3, n_test=0, shape=(12, 12, 6))
    return get_datalists("heart", tmp_path, val_fraction=0.34)


@pytest.mark.parametrize("cache,cls", [("memory", CacheDataset), ("disk", MmapPersistentDataset), ("none", Dataset)])
def test_cache_modes_give_the_same_items(tmp_path, lists, cache, cls):
    t = get_transforms("heart", "validate")
    ds = get_dataset(lists["train"], t, cache=cache, cache_dir=tmp_path / "cache")
    assert type(ds) is cls and len(ds) == 2 and isinstance(ds, (CacheDataset, PersistentDataset, Dataset))
    ref = t(lists["train"][1])
    assert torch.equal(ds[1]["image"], ref["image"]) and torch.equal(ds[1]["label"], ref["label"])
    assert ds[1]["label"].dtype == torch.int64


def test_partial_memory_cache(lists):
    ds = get_dataset(lists["train"], get_transforms("heart", "validate"), cache_rate=0.5)
    assert ds.cache_num == 1 and ds[1]["image"].shape == (1, 32, 32, 6)


def test_disk_cache_is_reused_and_keyed_by_transform(tmp_path, lists, monkeypatch):
    cache = tmp_path / "cache"
    t = get_transforms("heart", "train", num_samples=2)
    ds = get_dataset(lists["train"], t, cache="disk", cache_dir=cache)
    for i in range(len(ds)):
        assert len(ds[i]) == 2
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2
    cached = torch.load(cache / files[0], weights_only=False)
    assert cached["label"].dtype == torch.uint8 and "label_fg_slices" in cached  # uint8 labels on disk
    assert cached["image"].shape == (1, 6, 12, 12)  # slice-major (C, D, H, W)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    hit = ds[0]
    assert calls == [True] and len(hit) == 2 and hit[0]["image"].shape == (1, 32, 32)  # cache hit memory-mapped
    monkeypatch.setattr(torch, "load", real_load)
    again = get_dataset(lists["train"], get_transforms("heart", "train", num_samples=2), cache="disk", cache_dir=cache)
    again[0], again[1]
    assert sorted(p.name for p in cache.iterdir()) == files  # same chain: same files
    other = get_dataset(
        lists["train"], get_transforms("heart", "train", spatial_size=16), cache="disk", cache_dir=cache
    )
    other[0]
    assert len(list(cache.iterdir())) == 3  # a different deterministic part never reuses stale files


_HASH_CODE = """
from monai.data.utils import pickle_hashing
from monai.transforms import RandomizableTrait, Transform
from onenet_med.data import get_transforms

def det_hash(t):
    det = []
    for x in t.flatten().transforms:
        if isinstance(x, RandomizableTrait) or not isinstance(x, Transform):
            break
        det.append(x)
    return pickle_hashing(det).decode()
"""


@pytest.mark.slow  # a second interpreter importing MONAI: ~10 s on 2 shared cores
def test_disk_cache_key_is_stable_across_processes(subprocess_env):
    # PersistentDataset's key hashes the pickled deterministic transforms: it must not depend on the process
    # (e.g. on set ordering under hash randomisation), else every run would rebuild the Brain/Lung cache
    scope: dict = {}
    exec(_HASH_CODE, scope)
    here = scope["det_hash"](get_transforms("brain", "train"))
    env = dict(subprocess_env, PYTHONHASHSEED="12345")
    code = _HASH_CODE + "print(det_hash(get_transforms('brain', 'train')))"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == here and len(here) == 64


def test_bad_cache_arguments(lists):
    t = get_transforms("heart", "validate")
    with pytest.raises(ValueError, match="cache must be one of"):
        get_dataset(lists["train"], t, cache="ram")
    with pytest.raises(ValueError, match="needs a cache_dir"):
        get_dataset(lists["train"], t, cache="disk")


@pytest.mark.parametrize(
    "value, expected",
    [("memory", "memory"), ("disk", "disk"), ("none", "none"), ("false", "none"), ("False", "none"), (0, "none"),
     ("0", "none"), (False, "none"), ("true", "disk"), ("True", "disk"), (1, "disk"), ("1", "disk"), (True, "disk")],
)  # fmt: skip
def test_cache_mode_takes_modes_and_switch_values(value, expected):
    assert cache_mode(value, default="disk") == expected


@pytest.mark.parametrize("value", ["yes", "Memory", "", None, 2])
def test_cache_mode_rejects_other_values(value):
    with pytest.raises(ValueError, match=r"cache takes one of memory, disk, none or a switch value .* got"):
        cache_mode(value, default="memory")

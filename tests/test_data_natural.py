import os

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.transforms import Invertd
from PIL import Image

from onenet_med.data import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PetTrimapd,
    get_datalists,
    get_dataset,
    get_transforms,
)
from onenet_med.data.natural import read_pets_list
from tests.data_trees import PETS_CASES, make_pets_tree, make_voc_tree, pets_trimap, voc_label


@pytest.mark.parametrize("where", ["root", "VOCdevkit", "VOC2012"])
def test_voc_datalists(tmp_path, where):
    voc = make_voc_tree(tmp_path)
    path = {"root": tmp_path, "VOCdevkit": tmp_path / "VOCdevkit", "VOC2012": voc}[where]
    lists = get_datalists("voc", path)
    assert [it["case_id"] for it in lists["train"]] == ["2007_000000", "2007_000001"]
    assert [it["case_id"] for it in lists["validation"]] == ["2007_000002", "2007_000003"]
    assert lists["test"] == []
    assert lists["train"][0]["image"] == str(voc / "JPEGImages" / "2007_000000.jpg")
    assert lists["train"][0]["label"] == str(voc / "SegmentationClass" / "2007_000000.png")


def test_voc_missing_files_and_tree(tmp_path):
    with pytest.raises(FileNotFoundError, match="No PASCAL VOC tree"):
        get_datalists("voc", tmp_path)
    voc = make_voc_tree(tmp_path)
    os.remove(voc / "SegmentationClass" / "2007_000003.png")
    with pytest.raises(FileNotFoundError, match="(?s)1 listed file.*SegmentationClass/2007_000003.png"):
        get_datalists("voc", tmp_path)


@pytest.mark.parametrize("mode", ["train", "validate"])
def test_voc_transforms_keep_void(tmp_path, mode):
    make_voc_tree(tmp_path, sizes=((32, 32), (40, 24)))
    lists = get_datalists("voc", tmp_path)
    # native size 32 x 32 and spatial_size 32: nearest-exact resize is the identity -> exact labels
    out = get_transforms("voc", mode, spatial_size=32, flips=False)(lists["train"][0])
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["label"].shape == (1, 32, 32) and out["label"].dtype == torch.int64
    assert np.array_equal(out["label"][0].numpy(), voc_label(32, 32, 1))
    # downsized to 16 x 16: classes and void survive, nothing else appears
    small = get_transforms("voc", mode, spatial_size=16)(lists["validation"][0])
    assert set(small["label"].unique().tolist()) == {0, 2, IGNORE_INDEX}


def test_imagenet_normalisation(tmp_path):
    Image.fromarray(np.full((8, 8, 3), (255, 0, 128), np.uint8)).save(tmp_path / "x.png")
    out = get_transforms("voc", "infer", spatial_size=8)({"image": str(tmp_path / "x.png")})
    want = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(out["image"][:, 0, 0].numpy(), want, atol=1e-5)


def test_voc_native_size_pads_label_with_void(tmp_path):
    make_voc_tree(tmp_path, sizes=((24, 40), (20, 20)))
    lists = get_datalists("voc", tmp_path)
    out = get_transforms("voc", "validate", spatial_size=None)(lists["train"][0])
    assert out["image"].shape == (3, 32, 64)
    assert np.array_equal(out["label"][0, :24, :40].numpy(), voc_label(24, 40, 1))
    assert torch.all(out["label"][0, 24:] == IGNORE_INDEX) and torch.all(out["label"][0, :, 40:] == IGNORE_INDEX)
    assert not out["image"][:, 24:].any()


def test_natural_infer_inverts_to_original_size(tmp_path):
    make_voc_tree(tmp_path, sizes=((24, 40), (20, 20)))
    path = get_datalists("voc", tmp_path)["train"][0]["image"]
    t = get_transforms("voc", "infer")
    d = t({"image": path})
    assert d["image"].shape == (3, 256, 256)
    d["pred"] = MetaTensor(torch.zeros(1, 256, 256))  # network outputs are MetaTensors under MONAI inferers
    d["pred"][0, :128] = 1  # top half
    back = Invertd("pred", t, orig_keys="image", nearest_interp=True)(d)["pred"]
    assert back.shape == (1, 24, 40)
    assert torch.all(back[0, :12] == 1) and torch.all(back[0, 12:] == 0)


def test_pets_datalists(tmp_path):
    make_pets_tree(tmp_path)
    lists = get_datalists("pets", tmp_path, val_fraction=0.25, seed=0)
    assert len(lists["train"]) == 3 and len(lists["validation"]) == 1
    assert {it["case_id"] for it in lists["train"] + lists["validation"]} == {c[0] for c in PETS_CASES[:4]}
    assert [it["case_id"] for it in lists["test"]] == ["yorkshire_terrier_7", "pug_5"]
    breeds = {it["case_id"]: it["class_id"] for it in lists["train"] + lists["validation"] + lists["test"]}
    assert breeds == {n: c for n, c, _, _ in PETS_CASES}
    other = get_datalists("pets", tmp_path, val_fraction=0.25, seed=0)
    assert other["validation"] == lists["validation"]


@pytest.mark.parametrize("task,pet,border", [("pets", 1, 2), ("petf", None, None)])
def test_pets_trimap_mapping(tmp_path, task, pet, border):
    make_pets_tree(tmp_path)
    lists = get_datalists(task, tmp_path)
    for item in lists["train"] + lists["test"]:
        out = get_transforms(task, "validate", spatial_size=(24, 30))(item)
        trimap = pets_trimap(24, 30)
        want = np.zeros_like(trimap, dtype=np.int64)
        want[trimap == 1] = pet if pet is not None else item["class_id"]
        want[trimap == 3] = border if border is not None else item["class_id"]
        assert np.array_equal(out["label"][0].numpy(), want)
        assert out["image"].shape == (3, 24, 30)  # greyscale JPEGs become RGB too


def test_pet_trimap_rejects_other_values():
    with pytest.raises(ValueError, match="trimap values must be 1, 2 or 3; found \\[0, 7\\]"):
        PetTrimapd("label")({"label": torch.tensor([[[0, 1, 7]]])})
    out = PetTrimapd("label", breed_key="class_id")({"label": torch.tensor([[[1, 2, 3]]]), "class_id": 37})
    assert out["label"].tolist() == [[[37, 0, 37]]]


def test_read_pets_list_errors(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("#comment\nAbyssinian_1 1 1 1\nbad_2 40 1 1\n")
    with pytest.raises(ValueError, match="list.txt:3: class id 40 outside 1..37"):
        read_pets_list(p)
    p.write_text("Abyssinian_1\n")
    with pytest.raises(ValueError, match="list.txt:1: expected"):
        read_pets_list(p)


def test_pets_train_batches_and_flips(tmp_path):
    make_pets_tree(tmp_path)
    lists = get_datalists("petf", tmp_path)
    t = get_transforms("petf", "train", spatial_size=32)
    ds = get_dataset(lists["train"], t, cache="memory")
    assert ds.copy_cache is True
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["label"].shape == (3, 1, 32, 32)
    # horizontal flips only: the label stays a (possibly mirrored) copy of the unflipped one
    ref = get_transforms("petf", "validate", spatial_size=32)(lists["train"][0])["label"]
    seen = set()
    t.set_random_state(0)
    for _ in range(20):
        lab = t(lists["train"][0])["label"]
        seen.add("same" if torch.equal(lab, ref) else "mirrored" if torch.equal(lab, ref.flip(-1)) else "other")
    assert seen == {"same", "mirrored"}

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Invertd

from onenet_med.data import RandSliceByPosNegd, get_datalists, get_dataset, get_task, get_transforms
from onenet_med.data.transforms import resolve_spatial_size
from tests.data_trees import LPS_AFFINE, make_msd_task, save_nifti, volume_arrays

SHAPE = (20, 24, 12)  # X, Y, Z of the synthetic files


def _lists(tmp_path, name, **kw):
    make_msd_task(tmp_path, name, n_train=3, n_test=1, shape=SHAPE, **kw)
    return get_datalists(name, tmp_path, val_fraction=0.34, seed=0)


def _zscore_nonzero(x: np.ndarray) -> np.ndarray:
    out = x.astype(np.float64).copy()
    nz = x != 0
    out[nz] = (x[nz] - x[nz].mean()) / x[nz].std()
    return out


def _ras(x: np.ndarray) -> np.ndarray:
    """The synthetic files are LPS-like (x, y flipped): RAS = flip axes 0 and 1 of the spatial dims."""
    return x[::-1, ::-1]


@pytest.mark.parametrize(
    "name,channels,slice_hw",
    [("heart", 1, (32, 32)), ("lung", 1, (32, 32)), ("brain", 4, (256, 256)), ("demo", 1, (32, 32))],
)
def test_train_samples_shapes_dtypes_classes(tmp_path, name, channels, slice_hw):
    lists = _lists(tmp_path, name)
    t = get_transforms(name, "train", num_samples=3)
    t.set_random_state(0)
    samples = t(lists["train"][0])
    assert isinstance(samples, list) and len(samples) == 3
    for s in samples:
        assert s["image"].shape == (channels, *slice_hw) and s["image"].dtype == torch.float32
        assert s["label"].shape == (1, *slice_hw) and s["label"].dtype == torch.int64
        assert set(s["label"].unique().tolist()) <= set(range(get_task(name).num_classes))
        assert 0 <= s["slice_index"] < SHAPE[2] and s["case_id"] == lists["train"][0]["case_id"]
        assert "label_fg_slices" not in s


@pytest.mark.parametrize("name,channels", [("heart", 1), ("brain", 4), ("lung", 1)])
def test_validate_keeps_whole_volume_in_ras(tmp_path, name, channels):
    lists = _lists(tmp_path, name)
    item = lists["validation"][0]
    out = get_transforms(name, "validate")(item)
    image, label = out["image"], out["label"]
    idx = int(item["case_id"].split("_")[1])
    raw_img, raw_lab = volume_arrays(name, SHAPE, seed=idx)
    raw_img = raw_img if raw_img.ndim == 4 else raw_img[..., None]
    if name == "brain":  # cropped to the non-zero box (2..18, 2..22), then padded to 32 x 32
        raw_img, raw_lab = raw_img[2:18, 2:22], raw_lab[2:18, 2:22]
    x, y, z = raw_lab.shape
    assert image.shape == (channels, 32, 32, SHAPE[2]) and label.shape == (1, 32, 32, SHAPE[2])
    assert label.dtype == torch.int64 and image.dtype == torch.float32
    assert np.array_equal(label[0, :x, :y].numpy(), _ras(raw_lab))
    assert not label[:, x:].any() and not label[:, :, y:].any() and not image[:, x:].any()
    for c in range(channels):
        if get_task(name).modality == "mri":
            want = _zscore_nonzero(_ras(raw_img[..., c]))
        else:
            want = np.clip((_ras(raw_img[..., c]) + 1000) / 1500, 0, 1)
        np.testing.assert_allclose(image[c, :x, :y].numpy(), want, atol=1e-4)


def test_mri_zscore_per_channel_on_nonzero_voxels(tmp_path):
    lists = _lists(tmp_path, "brain")
    out = get_transforms("brain", "validate", crop_foreground=False)(lists["train"][0])
    img = out["image"].numpy()
    raw, _ = volume_arrays("brain", SHAPE, seed=int(lists["train"][0]["case_id"].split("_")[1]))
    nz = _ras(raw[..., 0]) != 0
    for c in range(4):  # channels have scales 100..400 in the file; all become mean 0, std 1 inside the brain
        vals = img[c, :20, :24][nz]
        assert abs(vals.mean()) < 1e-4 and abs(vals.std() - 1) < 1e-3
        assert np.all(img[c, :20, :24][~nz] == 0)


def test_ct_window_hand_values(tmp_path):
    hu = np.array([-2000, -1000, -250, 500, 3000], np.float32).reshape(5, 1, 1) * np.ones((5, 2, 2), np.float32)
    save_nifti(tmp_path / "ct.nii.gz", hu, np.eye(4))
    out = get_transforms("lung", "infer")({"image": str(tmp_path / "ct.nii.gz")})
    np.testing.assert_allclose(out["image"][0, :5, 0, 0].numpy(), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_orientation_moves_a_voxel_as_ras_says(tmp_path):
    lab = np.zeros((6, 7, 3), np.uint8)
    lab[1, 2, 1] = 1
    img = np.ones((6, 7, 3), np.float32)
    save_nifti(tmp_path / "i.nii.gz", img, LPS_AFFINE)
    save_nifti(tmp_path / "l.nii.gz", lab, LPS_AFFINE)
    out = get_transforms("heart", "validate")(
        {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
    )
    assert torch.nonzero(out["label"][0]).tolist() == [[6 - 1 - 1, 7 - 1 - 2, 1]]
    assert np.allclose(np.diag(out["image"].affine.numpy())[:3], [1.5, 1.25, 2.0])  # RAS: positive diagonal


def test_native_demo_slices_padded_not_resized(tmp_path):
    # the MNI152 demo geometry: 197 x 233 slices pad to 224 x 256 (SPEC 6a: no resizing)
    img = np.random.default_rng(0).uniform(1, 2, (197, 233, 3)).astype(np.float32)
    save_nifti(tmp_path / "i.nii.gz", img, np.eye(4))
    save_nifti(tmp_path / "l.nii.gz", (img > 1.5).astype(np.uint8), np.eye(4))
    item = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
    assert get_transforms("demo", "validate")(item)["image"].shape == (1, 224, 256, 3)
    assert get_transforms("demo", "train", num_samples=1)(item)[0]["image"].shape == (1, 224, 256)


@pytest.mark.parametrize("size,expected", [(64, (64, 64)), ((64, 32), (64, 32)), ((40, 48), (64, 64))])
def test_resize_in_plane(tmp_path, size, expected):
    lists = _lists(tmp_path, "heart")
    out = get_transforms("heart", "validate", spatial_size=size)(lists["train"][0])
    assert out["image"].shape == (1, *expected, SHAPE[2])  # resized, then padded to a multiple of 32
    assert set(out["label"].unique().tolist()) == {0, 1}  # nearest-exact keeps labels integer
    s = get_transforms("heart", "train", spatial_size=size, num_samples=1)(lists["train"][0])[0]
    assert s["image"].shape == (1, *expected)


@pytest.mark.parametrize("name", ["heart", "brain"])
def test_infer_is_invertible_to_the_file_geometry(tmp_path, name):
    lists = _lists(tmp_path, name)
    path = lists["test"][0]["image"]
    t = get_transforms(name, "infer")
    d = t({"image": path})
    assert d["image"].shape[1] % 32 == 0 and d["image"].shape[2] % 32 == 0
    d["pred"] = d["image"].clone()
    back = Invertd("pred", t, orig_keys="image", nearest_interp=False)(d)["pred"]
    raw, _ = volume_arrays(name, SHAPE, seed=3)
    raw = raw if raw.ndim == 4 else raw[..., None]
    assert back.shape == (raw.shape[-1], *SHAPE)
    np.testing.assert_allclose(back.affine.numpy(), LPS_AFFINE, atol=1e-5)
    for c in range(raw.shape[-1]):  # back in file order (LPS), normalised values at every voxel
        np.testing.assert_allclose(back[c].numpy(), _zscore_nonzero(raw[..., c]), atol=1e-4)


def _slice_flags(label):
    return label.reshape(-1, label.shape[-1]).any(0)


@pytest.mark.parametrize("pos,neg,expected", [(1, 1, 0.5), (3, 1, 0.75), (1, 0, 1.0), (0, 1, 0.0)])
def test_pos_neg_balance_of_sampled_slices(pos, neg, expected):
    label = torch.zeros(1, 8, 8, 40, dtype=torch.uint8)
    label[0, 2:4, 2:4, [5, 6]] = 1  # 2 of 40 slices (5%) have foreground
    image = torch.arange(40, dtype=torch.float32).expand(2, 8, 8, 40).clone()
    t = RandSliceByPosNegd(["image", "label"], num_samples=50, pos=pos, neg=neg)
    t.set_random_state(0)
    samples = [s for _ in range(8) for s in t({"image": image, "label": label})]
    positive = np.array([bool(s["label"].any()) for s in samples])
    assert abs(positive.mean() - expected) < 0.06
    for s in samples:  # the image slice is the one the label came from
        assert s["image"].shape == (2, 8, 8) and torch.all(s["image"] == s["slice_index"])
        assert bool(s["label"].any()) == (s["slice_index"] in (5, 6))


def test_pos_neg_falls_back_when_a_kind_is_missing():
    t = RandSliceByPosNegd(["label"], num_samples=20, pos=1, neg=0)
    empty = t({"label": torch.zeros(1, 4, 4, 6)})
    assert len(empty) == 20  # no positive slice: negative ones are used
    full = RandSliceByPosNegd(["label"], num_samples=20, pos=0, neg=1)({"label": torch.ones(1, 4, 4, 6)})
    assert all(s["label"].all() for s in full)
    with pytest.raises(ValueError, match="num_samples"):
        RandSliceByPosNegd(["label"], num_samples=0)
    with pytest.raises(ValueError, match="not both 0"):
        RandSliceByPosNegd(["label"], pos=0, neg=0)


def test_chain_balance_on_sparse_foreground(tmp_path):
    lists = _lists(tmp_path, "heart", fg_slices=(7,))  # 1 of 12 slices positive
    t = get_transforms("heart", "train", num_samples=40)
    t.set_random_state(1)
    samples = t(lists["train"][0])
    frac = np.mean([bool(s["label"].any()) for s in samples])
    assert 0.3 < frac < 0.7  # uniform slice sampling would give ~0.08


def test_cache_stops_at_first_random_step_and_is_not_mutated(tmp_path):
    lists = _lists(tmp_path, "heart")
    ds = get_dataset(lists["train"], get_transforms("heart", "train", num_samples=4), cache="memory")
    assert ds.copy_cache is False  # RandSliceByPosNegd copies the slices it returns
    cached = ds._cache[0]
    assert cached["image"].shape == (1, 12, 20, 24) and cached["label"].dtype == torch.uint8  # slice-major
    vol = get_transforms("heart", "validate")(lists["train"][0])
    assert torch.equal(cached["image"][:, 5], vol["image"][:, :20, :24, 5].as_tensor())
    assert torch.equal(cached["label"][:, 3].long(), vol["label"][:, :20, :24, 3].as_tensor())
    assert cached["label_fg_slices"].tolist() == [k in (3, 4) for k in range(12)]
    before = cached["image"].clone()
    for _ in range(10):
        ds[0]
    assert torch.equal(ds._cache[0]["image"], before)
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 1, 32, 32) and batch["label"].shape == (8, 1, 32, 32)
    val = get_dataset(lists["validation"], get_transforms("heart", "validate"), cache="memory")
    assert val._cache[0]["label"].dtype == torch.uint8 and val[0]["label"].dtype == torch.int64


def test_bad_options():
    with pytest.raises(ValueError, match="mode must be one of"):
        get_transforms("heart", "training")
    with pytest.raises(ValueError, match="crop_foreground with a spatial_size"):
        get_transforms("brain", "train", spatial_size=128, crop_foreground=True)
    assert resolve_spatial_size(get_task("voc"), "task") == (256, 256)
    assert resolve_spatial_size(get_task("heart"), "task") is None
    with pytest.raises(ValueError, match="spatial_size"):
        resolve_spatial_size(get_task("heart"), (1, 2, 3))


def test_demo_fixed_intensity_stats_put_every_slab_on_one_scale(tmp_path):
    """The demo's slabs are parts of one image: one raw intensity maps to one value in every slab (issue 6)."""
    mean, std = get_task("demo").intensity_stats
    slabs = {  # a grey-matter-rich and a white-matter-rich slab: their own statistics differ
        "top": np.where(np.arange(6 * 5 * 4).reshape(6, 5, 4) % 3 == 0, 210.0, 165.0),
        "middle": np.where(np.arange(6 * 5 * 4).reshape(6, 5, 4) % 3 == 0, 165.0, 210.0),
    }
    outputs = {}
    for name, arr in slabs.items():
        arr[0] = 0.0  # outside the brain stays 0
        save_nifti(tmp_path / f"{name}.nii.gz", arr.astype(np.float32), np.eye(4))
        outputs[name] = get_transforms("demo", "infer")({"image": str(tmp_path / f"{name}.nii.gz")})["image"][0]
    for name, arr in slabs.items():
        out = outputs[name][:6, :5].numpy()
        np.testing.assert_allclose(out[arr != 0], (arr[arr != 0] - mean) / std, rtol=1e-5)
        assert np.all(out[arr == 0] == 0)
    # the default per-volume z-score would give white matter (210) different values in the two slabs
    per_volume = {n: _zscore_nonzero(a)[a == 210.0][0] for n, a in slabs.items()}
    assert abs(per_volume["top"] - per_volume["middle"]) > 0.5

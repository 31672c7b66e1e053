"""Predictor: exact output geometry, equality with the bundle's own inference path, formats, channels, errors."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from torch import nn

from onenet_med.bundle import load_bundle_config, output_name
from onenet_med.data import get_task
from onenet_med.inference import Predictor
from onenet_med.inference.predictor import CPU_BATCH_SLICES, argmax_channels
from onenet_med.networks import get_network
from onenet_med.networks.optimize import FastConv2d
from tests.inference_helpers import (
    BUNDLES,
    OBLIQUE_LPS,
    PERMUTED,
    RAS,
    TINY,
    ThresholdNet,
    make_affine,
    make_volume,
    save_checkpoint,
    save_nifti,
    threshold_labels,
)

GEOMETRIES = [
    ("oblique_lps_odd", OBLIQUE_LPS, (21, 19, 7)),
    ("ras_even", RAS, (32, 24, 5)),
    ("permuted_axes", PERMUTED, (6, 17, 23)),
    ("sheared", make_affine(flips=(1, -1, -1), spacing=(1.0, 0.7, 3.0)) @ np.array(
        [[1, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]
    ), (15, 22, 4)),
]  # fmt: skip


def _threshold_predictor(task="heart", **kwargs) -> Predictor:
    parser = load_bundle_config(BUNDLES / f"onenet_{task}")
    return Predictor(ThresholdNet(), parser.get_parsed_content("preprocessing"), get_task(task), device="cpu", **kwargs)


@pytest.fixture
def heart_case(tmp_path):
    image = save_nifti(tmp_path / "case.nii.gz", make_volume((21, 19, 7)), OBLIQUE_LPS)
    ckpt, _ = save_checkpoint(tmp_path / "model.pt", "heart", spread_on=image)
    return image, ckpt


@pytest.mark.parametrize("name,affine,shape", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_output_geometry_equals_input(tmp_path, name, affine, shape):
    volume = make_volume(shape, seed=1)
    src = save_nifti(tmp_path / f"{name}.nii.gz", volume, affine)
    predictor = _threshold_predictor(batch_slices=3)
    result = predictor.predict_volume(src)
    out = predictor.save(result, tmp_path / "out" / output_name(src))[0]
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape and b.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(b.get_sform(), a.get_sform())
    np.testing.assert_array_equal(b.get_qform(), a.get_qform())
    assert int(b.header["sform_code"]) == int(a.header["sform_code"]) == 2
    assert int(b.header["qform_code"]) == int(a.header["qform_code"]) == 1
    np.testing.assert_array_equal(b.header.get_zooms(), a.header.get_zooms())
    assert nib.aff2axcodes(b.affine) == nib.aff2axcodes(a.affine)
    np.testing.assert_array_equal(result.affine, a.affine)
    # the labels are in the file's voxel order: the pointwise network's answer is known voxel by voxel
    labels = np.asarray(b.dataobj)
    expected = threshold_labels(volume)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(result.labels, expected)
    assert result.labels.dtype == np.uint8 and result.slices == nib.as_closest_canonical(a).shape[2]
    np.testing.assert_allclose(result.spacing, np.linalg.norm(a.affine[:3, :3], axis=0))


@pytest.mark.parametrize("axis,name", [(0, "sagittal"), (1, "coronal"), (2, "axial"), ("coronal", "coronal")])
def test_slicing_axis(tmp_path, axis, name):
    volume = make_volume((13, 11, 9), seed=2)
    src = save_nifti(tmp_path / "v.nii.gz", volume, OBLIQUE_LPS)
    predictor = _threshold_predictor(axis=axis, batch_slices=4)
    result = predictor.predict_volume(src)
    ras_shape = nib.as_closest_canonical(nib.load(src)).shape
    pad = [32 * -(-s // 32) for s in ras_shape[:2]] + [ras_shape[2]]  # in-plane padded to a multiple of 32
    assert result.axis == {"sagittal": 0, "coronal": 1, "axial": 2}[name]
    assert result.slices == pad[result.axis]
    np.testing.assert_array_equal(result.labels, threshold_labels(volume))


def _bundle_reference(bundle, ckpt_net, image_path, out_dir, overrides=None):
    """The bundle's own path: its preprocessing, the network on ONE slice at a time, its postprocessing
    (softmax -> Invertd on probabilities -> argmax -> SaveImaged)."""
    parser = load_bundle_config(bundle, {**TINY, **(overrides or {}), "prediction_dir": str(out_dir)})
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    d = pre({"image": str(image_path)})
    img = d["image"]
    with torch.no_grad():
        logits = torch.stack([ckpt_net(img[None, ..., z].as_tensor())[0] for z in range(img.shape[-1])], dim=-1)
    d["pred"] = MetaTensor(logits, meta=dict(img.meta))
    post(d)
    return np.asarray(nib.load(str(out_dir / output_name(image_path))).dataobj)


@pytest.mark.parametrize(
    "task,channels,overrides",
    [("heart", 1, {}), ("brain", 4, {}), ("heart", 1, {"spatial_size": 24})],
    ids=["heart_native", "brain_cropped", "heart_resized"],
)
def test_equals_bundle_reference(tmp_path, task, channels, overrides):
    src = save_nifti(tmp_path / "case.nii.gz", make_volume((21, 19, 7), channels), OBLIQUE_LPS)
    ckpt, net = save_checkpoint(tmp_path / "model.pt", task, spread_on=src)
    bundle = BUNDLES / f"onenet_{task}"
    predictor = Predictor.from_bundle(bundle, ckpt, device="cpu", overrides={**TINY, **overrides}, batch_slices=3)
    assert predictor.resamples == ("spatial_size" in overrides)
    result = predictor.predict_volume(src)
    reference = _bundle_reference(bundle, net, src, tmp_path / "ref", overrides)
    assert len(np.unique(reference)) > 1
    np.testing.assert_array_equal(result.labels, reference)


def test_probabilities_sum_to_one_and_match_labels(tmp_path):
    src = save_nifti(tmp_path / "b.nii.gz", make_volume((21, 19, 7), 4), OBLIQUE_LPS)
    ckpt, _ = save_checkpoint(tmp_path / "model.pt", "brain", spread_on=src)
    predictor = Predictor.from_bundle(BUNDLES / "onenet_brain", ckpt, device="cpu", overrides=TINY)
    result = predictor.predict_volume(src, probabilities=True)
    probs = result.probabilities
    assert probs.shape == (4, 21, 19, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), result.labels)
    # the 2-voxel rim of zeros is cropped away by the Brain chain: background with certainty
    np.testing.assert_array_equal(probs[0, :2], 1.0)
    plain = predictor.predict_volume(src)  # the label-inversion path gives the same labels
    np.testing.assert_array_equal(plain.labels, result.labels)
    assert plain.probabilities is None
    _, prob_file = predictor.save(result, tmp_path / "b_seg.nii.gz", tmp_path / "b_prob.nii.gz")
    saved = nib.load(prob_file)
    assert saved.shape == (21, 19, 7, 4)
    np.testing.assert_allclose(np.asarray(saved.dataobj).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(saved.get_sform(), nib.load(src).get_sform())


def test_brain_four_channels_and_wrong_channel_counts(tmp_path):
    brain = save_nifti(tmp_path / "brain.nii.gz", make_volume((21, 19, 7), 4), OBLIQUE_LPS)
    mono = save_nifti(tmp_path / "mono.nii.gz", make_volume((21, 19, 7), 1), OBLIQUE_LPS)
    ckpt, _ = save_checkpoint(tmp_path / "brain.pt", "brain", spread_on=brain)
    predictor = Predictor.from_bundle(BUNDLES / "onenet_brain", ckpt, device="cpu", overrides=TINY)
    result = predictor.predict_volume(brain)
    assert result.labels.shape == (21, 19, 7) and result.labels.max() < 4
    assert len(np.unique(result.labels)) > 2
    with pytest.raises(ValueError, match=r"mono\.nii\.gz: 1 channel\(s\).*expects 4 channel\(s\): FLAIR"):
        predictor.predict_volume(mono)
    heart_ckpt, _ = save_checkpoint(tmp_path / "heart.pt", "heart")
    heart = Predictor.from_bundle(BUNDLES / "onenet_heart", heart_ckpt, device="cpu", overrides=TINY)
    with pytest.raises(ValueError, match=r"brain\.nii\.gz: 4 channel\(s\).*onenet_heart.*expects 1"):
        heart.predict_volume(brain)


def test_torchscript_model_ts_equals_state_dict(tmp_path, heart_case):
    image, _ = heart_case
    bundle = tmp_path / "onenet_heart"
    shutil.copytree(BUNDLES / "onenet_heart", bundle)  # a copy of the bundle: outputs and lookups stay in it
    save_checkpoint(bundle / "models" / "model.ts", "heart", spread_on=image, torchscript=True)
    scripted = Predictor.from_bundle(bundle, device="cpu")  # no model.pt: models/model.ts is picked
    assert isinstance(scripted.network, torch.jit.ScriptModule)
    assert scripted.checkpoint == str(bundle / "models" / "model.ts")
    save_checkpoint(bundle / "models" / "model.pt", "heart", spread_on=image)
    eager = Predictor.from_bundle(bundle, device="cpu", overrides=TINY)  # model.pt now takes precedence
    assert not isinstance(eager.network, torch.jit.ScriptModule)
    a = scripted.predict_volume(image, probabilities=True)
    b = eager.predict_volume(image, probabilities=True)
    assert len(np.unique(b.labels)) == 2
    np.testing.assert_array_equal(a.labels, b.labels)
    # the eager predictor runs the inference copy (BN folded, other GEMMs): the same logits within 1e-4
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_simpleitk_formats_equal_nifti(tmp_path, heart_case, ext):
    nifti, ckpt = heart_case
    ref = nib.load(nifti)
    img = sitk.ReadImage(nifti)  # same voxels and geometry, written in another format
    other = str(tmp_path / f"case{ext}")
    sitk.WriteImage(img, other)
    predictor = Predictor.from_bundle(BUNDLES / "onenet_heart", ckpt, device="cpu", overrides=TINY)
    a = predictor.predict_volume(nifti)
    b = predictor.predict_volume(other)
    np.testing.assert_array_equal(b.labels, a.labels)
    np.testing.assert_allclose(b.affine, ref.affine, atol=1e-5)
    out = predictor.save(b, tmp_path / "out" / output_name(other))[0]
    assert out.endswith(f"case_seg{ext}")
    written, source = sitk.ReadImage(out), sitk.ReadImage(other)
    assert written.GetPixelID() == sitk.sitkUInt8
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):  # NRRD stores text: equal to ~1e-16
        np.testing.assert_allclose(getattr(written, get)(), getattr(source, get)(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), a.labels)


def test_array_input_equals_file(tmp_path, heart_case):
    nifti, ckpt = heart_case
    predictor = Predictor.from_bundle(BUNDLES / "onenet_heart", ckpt, device="cpu", overrides=TINY)
    ref = nib.load(nifti)
    a = predictor.predict_volume(nifti)
    b = predictor.predict_volume(np.asarray(ref.dataobj), ref.affine)
    np.testing.assert_array_equal(b.labels, a.labels)
    assert b.source is None
    np.testing.assert_array_equal(b.affine, ref.affine)
    out = nib.load(predictor.save(b, tmp_path / "array_seg.nii.gz")[0])
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.dataobj), a.labels)
    # channel-first 4D array for the 4-channel bundle
    brain = make_volume((12, 10, 5), 4)
    bp = Predictor.from_bundle(
        BUNDLES / "onenet_brain", save_checkpoint(tmp_path / "b.pt", "brain")[0], device="cpu", overrides=TINY
    )
    last = bp.predict_volume(brain, OBLIQUE_LPS)
    first = bp.predict_volume(np.moveaxis(brain, -1, 0), OBLIQUE_LPS, channel_dim=0)
    np.testing.assert_array_equal(first.labels, last.labels)
    with pytest.raises(ValueError, match="affine must be an invertible"):
        predictor.predict_volume(np.zeros((4, 4, 4), np.float32), np.zeros((4, 4)))


def test_volume_metadata(tmp_path):
    volume = make_volume((13, 11, 6), seed=3)
    src = save_nifti(tmp_path / "v.nii.gz", volume, OBLIQUE_LPS)
    result = _threshold_predictor().predict_volume(src)
    voxel_ml = abs(np.linalg.det(nib.load(src).affine[:3, :3])) / 1000
    n = int(threshold_labels(volume).sum())
    assert result.voxels == {"background": volume.size - n, "left atrium": n}
    assert result.volume_ml["left atrium"] == pytest.approx(n * voxel_ml)
    meta = result.to_dict()
    json.dumps(meta)
    assert meta["shape"] == [13, 11, 6] and meta["slices"] == 6 and meta["input"] == src
    assert set(meta["seconds"]) == {"load", "preprocess", "inference", "postprocess", "total"}


def test_from_bundle_errors(tmp_path, heart_case):
    _, ckpt = heart_case
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        Predictor.from_bundle(tmp_path)
    bundle = tmp_path / "onenet_heart"
    shutil.copytree(BUNDLES / "onenet_heart", bundle)
    with pytest.raises(FileNotFoundError, match="model.pt nor .*model.ts"):
        Predictor.from_bundle(bundle, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        Predictor.from_bundle(bundle, tmp_path / "missing.pt", device="cpu")
    with pytest.raises(RuntimeError, match="cannot load"):  # features 4 weights into the full-width network
        Predictor.from_bundle(bundle, ckpt, device="cpu")
    (tmp_path / "bad.ts").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="cannot load TorchScript model"):
        Predictor.from_bundle(bundle, tmp_path / "bad.ts", device="cpu")
    with pytest.raises(ValueError, match="axis must be"):
        Predictor.from_bundle(bundle, ckpt, device="cpu", overrides=TINY, axis="oblique")
    with pytest.raises(ValueError, match="natural-image task"):
        Predictor.from_bundle(BUNDLES / "onenet_voc", ckpt, device="cpu")


def test_unreadable_inputs_name_the_file(tmp_path):
    predictor = _threshold_predictor()
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(RuntimeError, match=r"corrupt\.nii\.gz: unreadable or corrupt image"):
        predictor.predict_volume(tmp_path / "corrupt.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"nothere\.nii\.gz: no such file"):
        predictor.predict_volume(tmp_path / "nothere.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((5, 6), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match=r"flat\.nii\.gz: expected a 3D volume"):
        predictor.predict_volume(tmp_path / "flat.nii.gz")


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (4, 7), (3, 6, 1)])
def test_argmax_channels_equals_torch_argmax(shape):
    x = torch.randint(-2, 3, shape).float()  # many ties: the first maximum wins, like torch.argmax
    np.testing.assert_array_equal(argmax_channels(x).numpy(), x.argmax(0).numpy())
    assert argmax_channels(x).dtype == torch.uint8


def test_simpleitk_reader_registered_once():
    from onenet_med.inference import SimpleITKReader

    pre = load_bundle_config(BUNDLES / "onenet_heart").get_parsed_content("preprocessing")
    for _ in range(2):  # two predictors sharing one preprocessing chain
        Predictor(ThresholdNet(), pre, get_task("heart"), device="cpu")
    assert sum(isinstance(r, SimpleITKReader) for r in pre.transforms[0]._loader.readers) == 1


# ------------------------------------------------------------------------------------------ speed switches


class _Recorder(nn.Module):
    """ThresholdNet through a 3x3 convolution that only passes the first channel's centre tap (still pointwise),
    recording how each batch arrives."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0
        self.seen: list[dict] = []

    def forward(self, x):
        self.seen.append(
            {
                "batch": x.shape[0],
                "channels_last": x.is_contiguous(memory_format=torch.channels_last),
                "contiguous": x.is_contiguous(),
                "autocast": torch.is_autocast_enabled(x.device.type),
            }
        )
        y = self.conv(x).float()
        return torch.cat([torch.zeros_like(y), y], dim=1)


def test_predictor_runs_the_inference_copy(tmp_path, heart_case):
    image, ckpt = heart_case
    fast = Predictor.from_bundle(BUNDLES / "onenet_heart", ckpt, device="cpu", overrides=TINY)
    plain = Predictor.from_bundle(BUNDLES / "onenet_heart", ckpt, device="cpu", overrides=TINY, optimize=False)
    assert fast.optimize and not plain.optimize
    assert any(isinstance(m, FastConv2d) for m in fast.network.modules())
    assert not any(isinstance(m, FastConv2d) for m in plain.network.modules())
    assert fast.batch_slices == plain.batch_slices == CPU_BATCH_SLICES == 1  # CPU default, not the bundle's 32
    a = fast.predict_volume(image, probabilities=True)
    b = plain.predict_volume(image, probabilities=True)
    assert len(np.unique(a.labels)) == 2
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


def test_predictor_on_cpu_retains_freed_memory(monkeypatch):
    import onenet_med.engine.network_switches as switches

    calls = []
    monkeypatch.setattr(switches, "retain_freed_cpu_memory", lambda: calls.append(1) or True)
    pre = load_bundle_config(BUNDLES / "onenet_heart").get_parsed_content("preprocessing")
    Predictor(ThresholdNet(), pre, get_task("heart"), device="cpu", optimize=False)
    assert calls == []
    Predictor(ThresholdNet(), pre, get_task("heart"), device="cpu")
    assert calls == [1]


def test_predictor_does_not_change_the_network():
    net = get_network("onenet_ed4", 1, 2, features=4).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    parser = load_bundle_config(BUNDLES / "onenet_heart")
    predictor = Predictor(net, parser.get_parsed_content("preprocessing"), get_task("heart"), device="cpu")
    assert predictor.network is not net and net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_channels_last_switch(tmp_path):
    """4 channels (for 1 channel both layouts coincide): the batches and the weights are converted when asked."""
    src = save_nifti(tmp_path / "b.nii.gz", make_volume((21, 19, 5), 4), OBLIQUE_LPS)
    parser = load_bundle_config(BUNDLES / "onenet_brain")
    labels = {}
    for channels_last in (False, True):
        net = _Recorder(4)
        predictor = Predictor(
            net, parser.get_parsed_content("preprocessing"), get_task("brain"), device="cpu", batch_slices=2,
            channels_last=channels_last, optimize=False,
        )  # fmt: skip
        labels[channels_last] = predictor.predict_volume(src).labels
        assert [s["batch"] for s in net.seen][:2] == [2, 2]
        assert all(s["channels_last"] == channels_last and s["contiguous"] != channels_last for s in net.seen)
        weight = predictor.network.conv.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert len(np.unique(labels[True])) == 2
    np.testing.assert_array_equal(labels[True], labels[False])


@pytest.mark.parametrize("amp", [False, True])
def test_amp_switch_runs_under_autocast(tmp_path, amp):
    volume = make_volume((13, 11, 4), seed=4)
    src = save_nifti(tmp_path / "v.nii.gz", volume, RAS)
    net = _Recorder()
    parser = load_bundle_config(BUNDLES / "onenet_heart")
    predictor = Predictor(
        net, parser.get_parsed_content("preprocessing"), get_task("heart"), device="cpu", amp=amp, optimize=False
    )
    assert Predictor(ThresholdNet(), predictor.preprocessing, get_task("heart"), device="cpu").amp is False
    result = predictor.predict_volume(src, probabilities=True)
    assert net.seen and all(s["autocast"] == amp for s in net.seen)
    assert result.probabilities.dtype == np.float32  # logits come back float32 either way
    np.testing.assert_array_equal(result.labels, threshold_labels(volume))


@pytest.mark.slow
def test_compile_switch_equals_eager(tmp_path, heart_case):
    image, ckpt = heart_case
    eager = Predictor.from_bundle(BUNDLES / "onenet_heart", ckpt, device="cpu", overrides=TINY)
    compiled = Predictor.from_bundle(BUNDLES / "onenet_heart", ckpt, device="cpu", overrides=TINY, compile=True)
    assert compiled.compile and hasattr(compiled.network, "_orig_mod")
    a = eager.predict_volume(image, probabilities=True)
    b = compiled.predict_volume(image, probabilities=True)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


class _Conv(nn.Module):
    """A 3x3 convolution from the first channel to K logits, fixed weights: flip-equivariant when the kernels are
    symmetric under both in-plane flips, not otherwise."""

    def __init__(self, symmetric: bool, classes: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        w = torch.randn(classes, 1, 3, 3, generator=g)
        if symmetric:
            w = (w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4
        self.conv = nn.Conv2d(1, classes, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.linspace(-0.2, 0.2, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, :1])


def _conv_predictor(symmetric: bool) -> Predictor:
    parser = load_bundle_config(BUNDLES / "onenet_heart")
    pre = parser.get_parsed_content("preprocessing")
    return Predictor(_Conv(symmetric), pre, get_task("heart"), device="cpu", optimize=False, batch_slices=2)


def _symmetric_volume(shape=(32, 32, 5)) -> np.ndarray:
    """Positive values, identical under flips of the first two axes (32 x 32: no padding to break the symmetry)."""
    v = make_volume(shape, seed=4) + 0.1
    return (v + v[::-1] + v[:, ::-1] + v[::-1, ::-1]) / 4


def test_tta_of_a_flip_invariant_input_is_the_plain_prediction(tmp_path):
    src = save_nifti(tmp_path / "sym.nii.gz", _symmetric_volume(), RAS)
    predictor = _conv_predictor(symmetric=True)
    plain = predictor.predict_volume(src, probabilities=True, uncertainty=True)
    tta = predictor.predict_volume(src, probabilities=True, tta=True)
    assert 0.05 < plain.labels.mean() < 0.95 and plain.augmentations == 1 and tta.augmentations == 4
    np.testing.assert_array_equal(tta.labels, plain.labels)
    np.testing.assert_allclose(tta.probabilities, plain.probabilities, atol=1e-6)
    np.testing.assert_allclose(tta.uncertainty, plain.uncertainty, atol=1e-5)
    assert plain.disagreement is None and float(np.abs(tta.disagreement).max()) < 1e-5


def test_tta_averages_the_flipped_passes_flipped_back(tmp_path):
    """Reference formulation: the preprocessed slices through the network with torch.flip, softmax, flipped back,
    averaged; an asymmetric network so that a missing flip-back or a wrong axis changes the result."""
    volume = make_volume((32, 32, 5), seed=5) + 0.1
    src = save_nifti(tmp_path / "v.nii.gz", volume, RAS)
    predictor = _conv_predictor(symmetric=False)
    tta = predictor.predict_volume(src, probabilities=True, tta=True)
    x = predictor.preprocessing({"image": src})["image"].as_tensor()  # (1, 32, 32, 5), RAS = the file's order
    slices = x.permute(3, 0, 1, 2)  # (D, C, H, W)
    passes = []
    with torch.no_grad():
        for dims in ([], [2], [3], [2, 3]):
            flipped = slices.flip(dims) if dims else slices
            probs = torch.softmax(predictor.network(flipped), dim=1)
            passes.append(probs.flip(dims) if dims else probs)
    stacked = torch.stack(passes)  # (4, D, K, H, W)
    mean = stacked.mean(0).permute(1, 2, 3, 0).numpy()  # (K, H, W, D)
    np.testing.assert_allclose(tta.probabilities, mean, atol=1e-5)
    entropy = -(mean * np.log(mean)).sum(0) / np.log(2)
    np.testing.assert_allclose(tta.uncertainty, entropy, atol=1e-5)
    mean_entropy = (-(stacked * stacked.log()).sum(2) / np.log(2)).mean(0).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(tta.disagreement, entropy - mean_entropy, atol=1e-5)
    assert float(tta.disagreement.max()) > 1e-3  # the passes do disagree: the test can tell flips apart
    plain = predictor.predict_volume(src, probabilities=True)
    assert float(np.abs(plain.probabilities - tta.probabilities).max()) > 1e-3


@pytest.mark.parametrize("name,affine,shape", GEOMETRIES[:3], ids=[g[0] for g in GEOMETRIES[:3]])
def test_uncertainty_map_and_summaries_in_the_input_geometry(tmp_path, name, affine, shape):
    src = save_nifti(tmp_path / f"{name}.nii.gz", make_volume(shape, seed=2), affine)
    predictor = _threshold_predictor()
    result = predictor.predict_volume(src, uncertainty=True, probabilities=True)
    p = result.probabilities
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(0) / np.log(2)  # what the map should hold, voxel by voxel
    assert result.uncertainty.shape == result.labels.shape == shape
    np.testing.assert_allclose(result.uncertainty, entropy, atol=1e-5)
    axis = result.slice_axis
    assert shape[axis] == result.slices  # the input axis the network sliced along
    foreground = np.moveaxis(result.labels > 0, axis, 0)
    per_slice = [e[f].mean() if f.any() else np.nan for e, f in zip(np.moveaxis(entropy, axis, 0), foreground)]
    assert np.isfinite(per_slice).sum() >= 2  # slices with foreground to compare
    np.testing.assert_allclose(result.slice_uncertainty, per_slice, atol=1e-6)
    assert result.case_uncertainty == pytest.approx(float(entropy[result.labels > 0].mean()), abs=1e-6)
    meta = result.to_dict()
    assert meta["augmentations"] == 1 and json.loads(json.dumps(meta, allow_nan=False))["slice_uncertainty"] == [
        None if np.isnan(u) else pytest.approx(u, abs=1e-5) for u in per_slice
    ]
    out = predictor.save_map(result, result.uncertainty, tmp_path / "out" / output_name(src, "uncertainty"))
    written = nib.load(out)
    np.testing.assert_array_equal(written.get_sform(), nib.load(src).get_sform())
    np.testing.assert_allclose(np.asarray(written.dataobj), result.uncertainty)
    with pytest.raises(ValueError, match="no such map"):
        predictor.save_map(predictor.predict_volume(src), None, tmp_path / "x.nii.gz")


@pytest.mark.parametrize(
    "probabilities,expected",
    [
        ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]),  # certain
        ([[0.5], [0.5]], [1.0]),  # both classes equally likely
        ([[0.25], [0.25], [0.25], [0.25]], [1.0]),
        ([[0.9], [0.1]], [-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)]),  # 0.4690
    ],
)
def test_normalised_entropy(probabilities, expected):
    from onenet_med.inference.predictor import normalised_entropy

    got = normalised_entropy(torch.tensor(probabilities))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)

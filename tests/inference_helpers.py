"""Synthetic volumes, affines and tiny checkpoints for the inference tests."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from onenet_med.data import get_task
from onenet_med.networks import get_network

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
TINY = {"network_def#features": 4}


def _rot(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def make_affine(
    flips=(-1, -1, 1), spacing=(0.9, 1.3, 2.5), rotations=((2, 20.0), (0, 10.0)), origin=(31.5, -12.0, 7.25)
):
    """Voxel-to-RAS affine: flips (LPS-like by default) @ rotations @ diag(spacing), with an origin."""
    m = np.diag(np.asarray(flips, dtype=np.float64))
    for axis, degrees in rotations:
        m = m @ _rot(axis, degrees)
    a = np.eye(4)
    a[:3, :3] = m @ np.diag(spacing)
    a[:3, 3] = origin
    return a


#: oblique, LPS-like, non-uniform spacing
OBLIQUE_LPS = make_affine()
#: axes permuted: the file's first axis is superior-inferior (the axial axis is not the last one on disk)
PERMUTED = np.array([[0.0, 1.1, 0.0, 5.0], [0.0, 0.0, -0.8, 2.0], [-2.0, 0.0, 0.0, 9.0], [0.0, 0.0, 0.0, 1.0]])
RAS = np.diag([1.0, 1.0, 1.0, 1.0])


def make_volume(shape=(21, 19, 7), channels: int = 1, seed: int = 0) -> np.ndarray:
    """MRI-like float32 volume: zeros on a 2-voxel rim, positive smooth-plus-noise values inside;
    (X, Y, Z) for one channel, (X, Y, Z, C) otherwise (channels last, like MSD files)."""
    rng = np.random.default_rng(seed)
    x, y, z = shape
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    out = np.zeros((*shape, channels), np.float32)
    for c in range(channels):
        centre = rng.uniform(-0.4, 0.4, size=(3, 1, 1, 1))
        blob = np.exp(-((grid - centre) ** 2).sum(0) * 3.0)
        out[..., c] = 100 * (1 + c) * (blob + 0.3 * rng.random(shape))
    out[:2], out[-2:], out[:, :2], out[:, -2:] = 0, 0, 0, 0
    return out[..., 0] if channels == 1 else out


def save_nifti(path, data: np.ndarray, affine=OBLIQUE_LPS) -> str:
    """NIfTI with both sform (code 2) and qform (code 1) set from ``affine``."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    nib.save(img, os.fspath(path))
    return os.fspath(path)


def tiny_network(task: str = "heart", seed: int = 0, features: int = 4) -> nn.Module:
    spec = get_task(task)
    torch.manual_seed(seed)
    return get_network(spec.network, spec.in_channels, spec.num_classes, features=features).eval()


def spread_classes(net: nn.Module, task: str, image_path) -> nn.Module:
    """Shift the output bias so that, on this volume's slices, every class beats background on about half the
    voxels (a fresh network predicts nearly the same class everywhere, which would make label tests weak)."""
    from onenet_med.data import get_transforms

    image = get_transforms(task, "infer")({"image": os.fspath(image_path)})["image"].as_tensor()
    slices = image.permute(3, 0, 1, 2)
    head = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        for m in net.modules():  # BatchNorm statistics of these slices, so that activations vary
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        net.train()(slices)
        net.eval()
        logits = net(slices)
        diff = (logits - logits[:, :1]).transpose(0, 1).reshape(logits.shape[1], -1)
        head.bias -= diff.median(dim=1).values
    return net


def save_checkpoint(
    path, task: str = "heart", seed: int = 0, torchscript: bool = False, spread_on=None
) -> tuple[str, nn.Module]:
    """A fresh tiny network's state dict (``model.pt``) or TorchScript (``model.ts``) at ``path``; with
    ``spread_on`` (an image file) its classes are balanced on that volume (:func:`spread_classes`)."""
    net = tiny_network(task, seed)
    if spread_on is not None:
        spread_classes(net, task, spread_on)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    if torchscript:
        torch.jit.script(net).save(os.fspath(path))
    else:
        torch.save(net.state_dict(), os.fspath(path))
    return os.fspath(path), net


class ThresholdNet(nn.Module):
    """Logits (0, x): class 1 exactly where the normalised first channel is > 0, class 0 on ties (x == 0).

    A pointwise "network", so the expected label map of a whole volume is known by hand in the file's voxel
    order whatever the orientation, padding or slicing axis.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def threshold_labels(volume: np.ndarray) -> np.ndarray:
    """What :class:`ThresholdNet` predicts after z-scoring over non-zero voxels: above the non-zero mean."""
    v = volume if volume.ndim == 3 else volume[..., 0]
    nz = v != 0
    return ((v > v[nz].mean()) & nz).astype(np.uint8)


def fit_threshold(net: nn.Module, task: str, images, steps: int = 150) -> nn.Module:
    """Train ``net`` briefly to label the voxels whose preprocessed first channel is > 0 (about half of those
    inside the body) on every slice of ``images``: a trained network with confident and near-tie voxels, as
    quantization meets in practice (a random network's logits are all near-ties). Returns ``net`` in eval mode
    with BatchNorm statistics of these slices."""
    from onenet_med.data import get_transforms

    chain = get_transforms(task, "infer")
    x = torch.cat([chain({"image": os.fspath(p)})["image"].as_tensor().permute(3, 0, 1, 2) for p in images])
    target = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), target).backward()
        optimizer.step()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        net(x)
    return net.eval()


def export_tiny_heart(root) -> dict:
    """A tiny heart task (3 training volumes, odd sizes), a tiny checkpoint trained on it (:func:`fit_threshold`),
    and its exports through ``onenet-med export`` (onnx, onnx-int8 with 16 calibration slices, torchscript) into
    ``root/exported``.

    Returns:
        paths: ``task``, ``case`` (a volume to predict), ``checkpoint``, ``onnx``, ``onnx-int8``, ``torchscript``,
        ``out``; and ``network`` (the checkpoint's module, eval mode).
    """
    from onenet_med.cli import main
    from tests.data_trees import make_msd_task

    root = Path(root)
    task = make_msd_task(root, "heart", n_train=3, n_test=0, shape=(20, 24, 12))
    case = save_nifti(root / "scans" / "case.nii.gz", make_volume((21, 19, 7), seed=3), OBLIQUE_LPS)
    net = fit_threshold(tiny_network("heart"), "heart", sorted((task / "imagesTr").glob("*.nii.gz")))
    ckpt = str(root / "model.pt")
    torch.save(net.state_dict(), ckpt)
    out = root / "exported"
    paths: dict = {"task": task, "case": case, "checkpoint": ckpt, "network": net, "out": out}
    for fmt in ("onnx", "onnx-int8", "torchscript"):
        argv = ["export", "--bundle", str(BUNDLES / "onenet_heart"), "--checkpoint", ckpt, "--format", fmt]
        argv += ["--out", str(out), "--dataset_dir", str(task), "--calibration-slices", "16"]
        argv += ["--override", "network_def#features=4", "--override", f"bundle_root={root / 'bundle'}"]
        if main(argv) != 0:
            raise RuntimeError(f"onenet-med {' '.join(argv)} failed")
        paths[fmt] = str(out / {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx", "torchscript": "model.ts"}[fmt])
    return paths

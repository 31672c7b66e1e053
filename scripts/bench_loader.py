#!/usr/bin/env python
"""Loader benchmark: 2D training slices/s delivered from Heart-sized volumes vs what onenet_ed4 consumes.

Builds synthetic MSD-Heart-like volumes (320 x 320 x ~110, sparse left-atrium-like blob), runs the real
``heart`` training chain (``get_transforms("heart", "train")``) over a warm in-memory cache
(``get_dataset(cache="memory")``) through a MONAI DataLoader, and compares the slices/s it delivers with the
slices/s ``onenet_ed4`` (1 -> 2 channels) trains at batch 8 on the same machine (Adam + cross-entropy,
forward + backward + step). The loader must not be the bottleneck: ratio >= 2.

    OMP_NUM_THREADS=2 python scripts/bench_loader.py --seconds 20 --workers 2 --train-steps 3
    python scripts/bench_loader.py --compare-monai-crop   # also time RandCropByPosNegLabeld (H, W, 1)

The loader and the network are timed one after the other (the network's CPU time is not shared with loader
workers here); on a GPU the network runs on the device and the loader on the CPU, as in training.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if importlib.util.find_spec("onenet_med") is None:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_volumes(out_dir: str | os.PathLike, n: int = 4, shape=(320, 320, 110), seed: int = 0) -> Path:
    """Write an MSD-layout ``Task02_Heart`` with ``n`` synthetic MRI volumes (uncompressed NIfTI, int16).

    Foreground: an ellipsoid occupying ~15% of the slices, like the left atrium in MSD Heart.
    """
    import nibabel as nib

    task = Path(out_dir) / "Task02_Heart"
    (task / "imagesTr").mkdir(parents=True, exist_ok=True)
    (task / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y, z = shape
    gx, gy, gz = np.ogrid[:x, :y, :z]
    training = []
    affine = np.diag([1.25, 1.25, 1.37, 1.0])
    for i in range(n):
        body = ((gx - x / 2) / (0.45 * x)) ** 2 + ((gy - y / 2) / (0.4 * y)) ** 2 <= 1
        image = np.where(body, rng.integers(200, 1200, size=shape), 0).astype(np.int16)
        cz = z / 2 + rng.uniform(-z / 10, z / 10)
        blob = ((gx - x / 2) / (x / 12)) ** 2 + ((gy - y / 2) / (y / 12)) ** 2 + ((gz - cz) / (0.075 * z)) ** 2 <= 1
        name = f"la_{i:03d}.nii"
        nib.save(nib.Nifti1Image(image, affine), task / "imagesTr" / name)
        nib.save(nib.Nifti1Image(blob.astype(np.uint8), affine), task / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "LeftAtrium", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
            "numTraining": n, "numTest": 0, "training": training, "test": []}  # fmt: skip
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def monai_crop_variant(transform):
    """The same chain with MONAI's RandCropByPosNegLabeld (roi (-1, -1, 1)) + squeeze instead of our slicer."""
    from monai.transforms import Compose, RandCropByPosNegLabeld, SqueezeDimd

    from onenet_med.data.transforms import RandSliceByPosNegd, SliceForegroundd

    ts = list(transform.transforms)
    i = next(k for k, t in enumerate(ts) if isinstance(t, RandSliceByPosNegd))
    ours = ts[i]
    prefix = [t for t in ts[:i] if not isinstance(t, SliceForegroundd)]
    crop = RandCropByPosNegLabeld(
        ["image", "label"], label_key="label", spatial_size=(-1, -1, 1), pos=1, neg=1, num_samples=ours.num_samples
    )
    return Compose([*prefix, crop, SqueezeDimd(["image", "label"], dim=-1), *ts[i + 1 :]])


def loader_rate(
    task_dir: Path,
    seconds: float,
    workers: int,
    batch: int,
    num_samples: int,
    monai_crop: bool = False,
    cache: str = "memory",
    cache_dir: str | None = None,
) -> dict:
    """Slices/s the heart training chain delivers from a warm cache (first batch not counted).

    ``cache="disk"``: PersistentDataset under ``cache_dir``, warmed by one pass before timing (the files then
    sit in the OS page cache, as after the first epoch on a machine with enough free RAM).
    """
    from monai.data import DataLoader

    from onenet_med.data import get_datalists, get_dataset, get_transforms

    items = get_datalists("heart", task_dir, val_fraction=0.0)["train"]
    transform = get_transforms("heart", "train", num_samples=num_samples)
    if monai_crop:
        transform = monai_crop_variant(transform)
    t0 = time.perf_counter()
    ds = get_dataset(items, transform, cache=cache, cache_dir=cache_dir, num_workers=max(1, workers))
    if cache == "disk":
        for i in range(len(ds)):
            ds[i]
    warm_s = time.perf_counter() - t0
    if batch % num_samples:
        raise ValueError(f"batch {batch} must be a multiple of num_samples {num_samples}.")
    loader = DataLoader(ds, batch_size=batch // num_samples, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    n, shape, t_start = 0, None, None
    while True:
        for b in loader:
            if t_start is None:  # first batch: worker start-up
                t_start, shape = time.perf_counter(), tuple(b["image"].shape)
                continue
            n += b["image"].shape[0]
            if time.perf_counter() - t_start >= seconds:
                elapsed = time.perf_counter() - t_start
                return {"slices_per_s": n / elapsed, "slices": n, "seconds": elapsed, "cache_warm_s": warm_s,
                        "batch_shape": shape}  # fmt: skip


def get_network_factory() -> Callable | None:
    """``onenet_med.networks.get_network`` or ``None`` (with a message) when the registry is not installed yet."""
    try:
        from onenet_med.networks import get_network
    except ImportError as e:
        print(f"[bench_loader] network registry unavailable ({e}); timing the loader only.", file=sys.stderr)
        return None
    return get_network


def network_rate(build: Callable, batch: int = 8, hw=(320, 320), in_channels: int = 1, out_channels: int = 2,
                 steps: int = 3, device: str = "auto") -> dict:  # fmt: skip
    """Slices/s a network trains at: Adam + cross-entropy, forward + backward + step (one warm-up step)."""
    import torch

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    net = build().to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(batch, in_channels, *hw, device=dev)
    y = torch.randint(0, out_channels, (batch, *hw), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {"slices_per_s": batch * steps / elapsed, "step_s": elapsed / steps, "device": str(dev),
            "parameters": sum(p.numel() for p in net.parameters())}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(320, 320, 110))
    p.add_argument("--seconds", type=float, default=20.0, help="loader timing window")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch", type=int, default=8, help="slices per batch")
    p.add_argument("--num-samples", type=int, default=4, help="slices drawn per volume visit")
    p.add_argument("--network", default="onenet_ed4")
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compare-monai-crop", action="store_true")
    p.add_argument("--cache", choices=("memory", "disk"), default="memory")
    p.add_argument("--data-dir", default=None, help="reuse/keep the synthetic volumes here")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir or tmp)
        task = root / "Task02_Heart"
        if not (task / "dataset.json").is_file():
            t0 = time.perf_counter()
            make_volumes(root, args.volumes, tuple(args.shape))
            print(f"wrote {args.volumes} volumes {tuple(args.shape)} in {time.perf_counter() - t0:.1f} s")
        res: dict = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "args": vars(args)}
        res["loader"] = loader_rate(task, args.seconds, args.workers, args.batch, args.num_samples,
                                    cache=args.cache, cache_dir=str(root / "cache"))  # fmt: skip
        lo = res["loader"]
        print(f"loader (RandSliceByPosNegd, {args.cache} cache): {lo['slices_per_s']:.1f} slices/s "
              f"({lo['slices']} slices in {lo['seconds']:.1f} s, {args.workers} workers, "
              f"cache warm-up {lo['cache_warm_s']:.1f} s, batch {lo['batch_shape']})")  # fmt: skip
        if args.compare_monai_crop:
            res["loader_monai_crop"] = loader_rate(task, args.seconds, args.workers, args.batch, args.num_samples,
                                                   monai_crop=True, cache=args.cache,
                                                   cache_dir=str(root / "cache_monai"))  # fmt: skip
            print(f"loader (RandCropByPosNegLabeld + squeeze): {res['loader_monai_crop']['slices_per_s']:.1f} slices/s")
    factory = get_network_factory()
    if factory is not None:
        hw = tuple(args.shape[:2])
        res["network"] = network_rate(lambda: factory(args.network, 1, 2), args.batch, hw, steps=args.train_steps,
                                      device=args.device)  # fmt: skip
        res["ratio"] = res["loader"]["slices_per_s"] / res["network"]["slices_per_s"]
        print(f"{args.network} training at batch {args.batch}, {hw}: {res['network']['slices_per_s']:.2f} slices/s "
              f"({res['network']['step_s']:.2f} s/step on {res['network']['device']})")  # fmt: skip
        verdict = "OK (loader is not the bottleneck)" if res["ratio"] >= 2 else "LOADER IS THE BOTTLENECK"
        print(f"ratio loader / network = {res['ratio']:.1f}  -> {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0 if res.get("ratio", 2) >= 2 else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Training throughput of the Heart bundle: 2D slices per second for several networks, measured in one run.

Builds a synthetic MSD Heart task (Heart-sized 320x320 slices by default), then runs the real bundle
(`bundles/onenet_heart/configs/train.json` through `monai.bundle.ConfigWorkflow`) for each network with the same
settings and times the training iterations after a warm-up (data loading included, validation excluded).

    python scripts/bench_train.py --networks onenet_ed4 unet4 --spatial-size 256 --batch-size 8 --iterations 6
    python scripts/bench_train.py --device cuda --batch-size 32 --iterations 50 --json runs/bench_train.json

Prints slices/s per network and the ratio to the first one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def make_heart_like_task(root: Path, cases: int, shape: tuple[int, int, int]) -> Path:
    """A synthetic Task02_Heart (MRI-like intensities, a foreground blob on a third of the slices)."""
    import nibabel as nib

    task = root / "Task02_Heart"
    rng = np.random.default_rng(0)
    training = []
    for i in range(cases):
        image = rng.uniform(100, 200, size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        x, y, z = shape
        label[x // 3 : x // 2, y // 3 : y // 2, z // 3 : 2 * z // 3] = 1
        for folder, data in (("imagesTr", image), ("labelsTr", label)):
            (task / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag([1.25, 1.25, 1.37, 1.0])), str(task / folder / f"la_{i:03d}.nii.gz"))
        training.append({"image": f"./imagesTr/la_{i:03d}.nii.gz", "label": f"./labelsTr/la_{i:03d}.nii.gz"})
    meta = {"name": "LeftAtrium", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"}}
    meta.update({"numTraining": cases, "numTest": 0, "training": training, "test": []})
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


class IterationTimer:
    """Ignite handler: wall time of the iterations after ``warmup`` (loading of the batch included)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.count = 0
        self.slices = 0
        self.seconds = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        now = time.perf_counter()
        if engine.state.iteration == self.warmup:
            self.start = now
        elif engine.state.iteration > self.warmup and self.start is not None:
            self.count = engine.state.iteration - self.warmup
            batch = engine.state.batch  # MONAI decollates it into a list of items after the step
            self.slices += len(batch) if isinstance(batch, list) else int(batch["image"].shape[0])
            self.seconds = now - self.start


def measure(network: str, dataset_dir: Path, args: argparse.Namespace, workdir: Path) -> dict:
    from monai.bundle import ConfigWorkflow

    settings = {
        "dataset_dir": str(dataset_dir),
        "bundle_root": str(workdir / network),
        "network_name": network,
        "spatial_size": args.spatial_size,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "max_epochs": 10_000,
        "val_interval": 10_000,
        "val_fraction": 0.1,
        "progress": False,
        "data_check": "none",
        "device": args.device,
        "amp": args.device.startswith("cuda"),
    }
    if args.features:
        settings["network_def#features"] = args.features
    wf = ConfigWorkflow(
        config_file=str(REPO / "bundles" / "onenet_heart" / "configs" / "train.json"),
        logging_file=False,
        workflow_type="train",
        **settings,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    timer = IterationTimer(args.warmup)
    timer.attach(trainer)
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.warmup + args.iterations), lambda e: e.terminate())
    trainer.run()
    if wf.parser.get_parsed_content("train#dataloader").__len__() < args.warmup + args.iterations:
        print(
            f"warning: epochs shorter than {args.warmup + args.iterations} iterations: the timing includes epoch ends"
        )
    slices = timer.slices
    params = sum(p.numel() for p in wf.parser.get_parsed_content("network_def").parameters())
    return {"network": network, "parameters": params, "iterations": timer.count, "seconds": timer.seconds,
            "slices_per_second": slices / timer.seconds if timer.seconds else float("nan")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["onenet_ed4", "unet4"])
    parser.add_argument("--spatial-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per network")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--features", type=int, default=None, help="network width override (default: 64)")
    parser.add_argument("--cases", type=int, default=20, help="synthetic volumes (Heart has 20)")
    parser.add_argument("--shape", type=int, nargs=3, default=(320, 320, 16), help="synthetic volume shape")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = make_heart_like_task(Path(tmp) / "data", args.cases, tuple(args.shape))
        results = [measure(name, dataset_dir, args, Path(tmp) / "runs") for name in args.networks]
    base = results[0]["slices_per_second"]
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, device {args.device}"
    if args.device.startswith("cuda"):
        machine += f" ({torch.cuda.get_device_name()})"
    print(f"Heart bundle training, {args.spatial_size}x{args.spatial_size} slices, batch {args.batch_size}, {machine}")
    print(f"{'network':<16}{'params (M)':>12}{'slices/s':>12}{'vs ' + results[0]['network']:>16}")
    for r in results:
        r["ratio_to_first"] = r["slices_per_second"] / base
        params, speed, ratio = r["parameters"] / 1e6, r["slices_per_second"], r["ratio_to_first"]
        print(f"{r['network']:<16}{params:>12.2f}{speed:>12.2f}{ratio:>16.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {**vars(args), "json": str(args.json)}, "machine": machine,
                                         "results": results}, indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())

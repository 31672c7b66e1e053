"""End-to-end slice-wise prediction of one Heart-sized volume vs the network's forward time alone.

A synthetic 320x320x130 MRI-like volume (LPS-oriented NIfTI, 1.25 x 1.25 x 1.37 mm, like MSD Heart) goes
through the whole ``onenet-med predict`` path of the heart bundle (load, preprocess, SliceInferer, Invertd, save
the uint8 label map) for each network; for ``onenet_ed4`` (the heart bundle's network, full width 64 at the
native 320x320 resolution) the forward passes alone on the same preprocessed slices, in the same batches, are
timed too. Pre/post-processing and I/O are not the bottleneck when ``end_to_end / forward`` stays close to 1
(goal: <= 1.5).

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_predict.py                       # defaults: 320x320x130, 3 networks
    python scripts/bench_predict.py --slices 16 --networks onenet_ed4 --json  # quick check, JSON on stdout
    python scripts/bench_predict.py --json results.json

Networks are freshly initialised (the weights do not change the time); building them is not timed. Each
measurement runs ``--repeats`` times and the fastest run is reported (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(REPO))

from onenet_med.bundle import load_bundle_config  # noqa: E402
from onenet_med.inference import Predictor  # noqa: E402

HEART_AFFINE = np.array([[-1.25, 0, 0, 200.0], [0, -1.25, 0, 180.0], [0, 0, 1.37, -90.0], [0, 0, 0, 1]])


def make_volume(path: str | os.PathLike, shape=(320, 320, 130), seed: int = 0) -> str:
    """A float32 MRI-like volume: smooth anatomy-sized blobs plus noise inside a zero border, saved as NIfTI."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    volume = 300 * np.exp(-3 * (x**2 + y**2 + 2 * z**2)) + 200 * np.exp(-40 * ((x - 0.2) ** 2 + (y + 0.1) ** 2 + z**2))
    volume = (volume + rng.normal(0, 20, size=shape).astype(np.float32)).clip(0).astype(np.float32)
    border = max(1, min(shape[:2]) // 40)
    volume[:border], volume[-border:], volume[:, :border], volume[:, -border:] = 0, 0, 0, 0
    nib.save(nib.Nifti1Image(volume, HEART_AFFINE), os.fspath(path))
    return os.fspath(path)


def build_predictor(network: str, batch_slices: int | None, device: str, bundle: Path) -> Predictor:
    """The bundle's preprocessing and ``network_def`` with ``network_name`` overridden (fresh weights)."""
    parser = load_bundle_config(bundle, {"network_name": network})
    net = parser.get_parsed_content("network_def")
    batch = batch_slices or int(parser.get_parsed_content("batch_size"))
    return Predictor(
        net,
        parser.get_parsed_content("preprocessing"),
        parser.get_parsed_content("task_spec"),
        device=device,
        batch_slices=batch,
        name=f"{bundle.name}:{network}",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(predictor: Predictor, image: str, out: str) -> dict:
    """Seconds for load -> preprocess -> SliceInferer -> Invertd -> save of one volume, and the step times."""
    start = time.perf_counter()
    result = predictor.predict_volume(image)
    t = time.perf_counter()
    predictor.save(result, out)
    save = time.perf_counter() - t
    total = time.perf_counter() - start
    steps = {k: round(v, 3) for k, v in result.seconds.items() if k != "total"}
    return {"seconds": total, "steps": {**steps, "save": round(save, 3)}, "slices": result.slices}


def forward_only(predictor: Predictor, image: str) -> float:
    """Seconds of the network's forward passes alone on the volume's preprocessed axial slices, in the same
    batches of ``batch_slices`` (slices already batched and on the device before the clock starts)."""
    img = predictor.preprocessing({"image": image})["image"].as_tensor()
    slices = img.permute(3, 0, 1, 2).contiguous().to(predictor.device)  # (D, C, H, W)
    batches = list(torch.split(slices, predictor.batch_slices))
    with torch.no_grad():
        _sync(predictor.device)
        start = time.perf_counter()
        for batch in batches:
            predictor.network(batch)
        _sync(predictor.device)
    return time.perf_counter() - start


def warm_up(predictor: Predictor, size: int) -> None:
    with torch.no_grad():
        predictor.network(torch.zeros(1, predictor.spec.in_channels, size, size, device=predictor.device))


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = Path(args.bundle)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = (args.size, args.size, args.slices)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        image = make_volume(Path(tmp) / "volume.nii.gz", shape)
        report: dict = {
            "volume": list(shape),
            "bundle": bundle.name,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "networks": {},
        }
        for name in args.networks:
            predictor = build_predictor(name, args.batch_slices, str(device), bundle)
            warm_up(predictor, min(args.size, 64))
            entry: dict = {
                "parameters": sum(p.numel() for p in predictor.network.parameters()),
                "batch_slices": predictor.batch_slices,
            }
            if name == args.reference or args.forward_all:
                entry["forward_seconds"] = min(forward_only(predictor, image) for _ in range(args.repeats))
            runs = [end_to_end(predictor, image, str(Path(tmp) / f"{name}_seg.nii.gz")) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["seconds"])
            entry.update(
                end_to_end_seconds=best["seconds"],
                steps=best["steps"],
                slices=best["slices"],
                volumes_per_minute=60.0 / best["seconds"],
            )
            if "forward_seconds" in entry:
                entry["end_to_end_over_forward"] = best["seconds"] / entry["forward_seconds"]
            report["networks"][name] = entry
            print(_line(name, entry), file=sys.stderr, flush=True)
            del predictor
    ref = report["networks"].get(args.reference)
    if ref is not None:
        report["end_to_end_over_forward"] = ref.get("end_to_end_over_forward")
        report["goal_end_to_end_over_forward"] = 1.5
        report["end_to_end_vs_reference"] = {
            name: e["end_to_end_seconds"] / ref["end_to_end_seconds"] for name, e in report["networks"].items()
        }
    return report


def _line(name: str, e: dict) -> str:
    fwd = (
        f"forward {e['forward_seconds']:.2f} s, ratio {e['end_to_end_over_forward']:.3f}, "
        if "forward_seconds" in e
        else ""
    )
    return (
        f"{name:12s} end-to-end {e['end_to_end_seconds']:.2f} s ({e['volumes_per_minute']:.2f} volumes/min), "
        f"{fwd}steps {e['steps']}"
    )


def print_table(report: dict) -> None:
    print(
        f"volume {'x'.join(map(str, report['volume']))}, bundle {report['bundle']}, device {report['device']}, "
        f"{report['threads']} thread(s), best of {report['repeats']}"
    )
    head = ("params", 11), ("e2e s", 9), ("fwd s", 9), ("e2e/fwd", 8), ("vol/min", 8), ("e2e vs ref", 10)
    print(f"{'network':12s} " + " ".join(f"{h:>{w}s}" for h, w in head))
    for name, e in report["networks"].items():
        fwd = f"{e['forward_seconds']:9.2f}" if "forward_seconds" in e else f"{'-':>9s}"
        ratio = f"{e['end_to_end_over_forward']:8.3f}" if "end_to_end_over_forward" in e else f"{'-':>8s}"
        rel = report.get("end_to_end_vs_reference", {}).get(name)
        rel_s = f"{rel:10.2f}" if rel is not None else f"{'-':>10s}"
        print(
            f"{name:12s} {e['parameters']:11,d} {e['end_to_end_seconds']:9.2f} {fwd} {ratio} "
            f"{e['volumes_per_minute']:8.3f} {rel_s}"
        )
    ratio = report.get("end_to_end_over_forward")
    if ratio is not None:
        verdict = "meets" if ratio <= report["goal_end_to_end_over_forward"] else "MISSES"
        print(f"end-to-end / forward = {ratio:.3f} ({verdict} the <= 1.5 goal)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "bundles" / "onenet_heart"))
    p.add_argument("--size", type=int, default=320, help="in-plane size (default 320)")
    p.add_argument("--slices", type=int, default=130, help="axial slices (default 130)")
    p.add_argument("--networks", nargs="+", default=["onenet_ed4", "unet4", "basicunet"])
    p.add_argument("--reference", default="onenet_ed4", help="network whose forward time alone is measured")
    p.add_argument("--forward-all", action="store_true", help="time the forward pass of every network")
    p.add_argument("--batch-slices", type=int, default=None, help="default: the bundle's batch_size")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS / torch's)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", nargs="?", const="-", default=None, help="write the report as JSON (to PATH, or stdout)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

"""End-to-end slice-wise prediction of one Heart-sized volume vs the network's forward time alone.

A synthetic 320x320x130 MRI-like volume (LPS-oriented NIfTI, 1.25 x 1.25 x 1.37 mm, like MSD Heart) goes
through the whole ``onenet-med predict`` path of the heart bundle (load, preprocess, SliceInferer, Invertd, save
the uint8 label map) for each network, with the settings a user gets (:class:`~onenet_med.inference.Predictor`
defaults: the inference copy, on CPU one slice per forward pass). For the reference network (``onenet_ed4``, the
heart bundle's, full width 64 at the native 320x320 resolution) two forward-only times are measured in the same
run: the forward passes on the volume's preprocessed slices in the predictor's batches (``forward_seconds``), and
the median batch-1 forward time of one slice (``slice_seconds``). Goals (issue 9): ``end_to_end / (slices x
slice_seconds) <= 1.3``; before it ``end_to_end / forward <= 1.5``.

Network names: registry names, ``NAME+plain`` for the network as trained (``optimize=False``). The backend
column is ``torch``; :data:`BACKENDS` maps a backend name to the function that builds its predictor:
``--backends torch onnxruntime onnxruntime-int8`` also runs every network through ONNX Runtime
(``Predictor(..., backend="onnxruntime")``: the same preprocessing, slicing and inversion), exported as
``onenet-med export`` does (the inference copy; int8 calibrated on 16 N(0, 1) slices: the time does not depend
on the calibration data); exporting is not timed.

``--batch-sweep`` instead times the reference network's forward passes per slice at batch 1, 2, 4, 8, 16 and
32 (the CPU default of ``Predictor`` is the fastest).

Usage::

    python scripts/bench_predict.py --threads 1 2                       # defaults: 320x320x130, onenet_ed4, basicunet
    python scripts/bench_predict.py --threads 1 2 --batch-sweep
    python scripts/bench_predict.py --slices 16 --networks onenet_ed4 --json  # quick check, JSON on stdout

Networks are freshly initialised (the weights do not change the time); building them is not timed. Each
end-to-end measurement runs ``--repeats`` times and the fastest run is reported (the least disturbed by other
load); the load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


PLAIN = "+plain"


def build_torch_predictor(network: str, batch_slices: int | None, device: str, bundle: Path) -> Predictor:
    """The bundle's preprocessing and ``network_def`` with ``network_name`` overridden (fresh weights), run as a
    user gets it (the inference copy; ``NAME+plain``: the network as trained); ``batch_slices`` None: the default."""
    name = network.removesuffix(PLAIN)
    parser = load_bundle_config(bundle, {"network_name": name})
    return Predictor(
        parser.get_parsed_content("network_def"),
        parser.get_parsed_content("preprocessing"),
        parser.get_parsed_content("task_spec"),
        device=device,
        batch_slices=batch_slices,
        name=f"{bundle.name}:{network}",
        optimize=not network.endswith(PLAIN),
    )


_EXPORTS: tempfile.TemporaryDirectory | None = None  # ONNX files of this run, removed at exit


def build_onnxruntime_predictor(
    network: str, batch_slices: int | None, device: str, bundle: Path, int8: bool = False
) -> Predictor:
    """The network (fresh weights) exported as ``onenet-med export`` writes it (``optimize_for_inference``; int8:
    static QDQ, first two convolutions float, calibrated on 16 random slices) and run by ONNX Runtime with the
    torch thread count; ``NAME+plain`` exports the network as trained."""
    from onenet_med.inference.export import export_onnx, quantize_int8
    from onenet_med.networks import optimize_for_inference

    global _EXPORTS
    if _EXPORTS is None:
        _EXPORTS = tempfile.TemporaryDirectory(prefix="bench_predict_onnx_")
    name = network.removesuffix(PLAIN)
    parser = load_bundle_config(bundle, {"network_name": name})
    spec = parser.get_parsed_content("task_spec")
    net = parser.get_parsed_content("network_def").eval()
    net = net if network.endswith(PLAIN) else optimize_for_inference(net, portable=True)
    path = os.path.join(_EXPORTS.name, f"{network}.onnx")
    export_onnx(net, path, spec.in_channels)
    if int8:
        rng = np.random.default_rng(0)
        slices = [rng.standard_normal((1, spec.in_channels, 64, 64), dtype=np.float32) for _ in range(16)]
        quantize_int8(path, path.replace(".onnx", "_int8.onnx"), slices)
        path = path.replace(".onnx", "_int8.onnx")
    predictor = Predictor(
        path,
        parser.get_parsed_content("preprocessing"),
        spec,
        device=device,
        batch_slices=batch_slices,
        name=f"{bundle.name}:{network}",
        backend="onnxruntime",
    )
    predictor.exported_parameters = sum(p.numel() for p in net.parameters())  # the session has no torch parameters
    return predictor


#: backend name -> builder(network, batch_slices, device, bundle) of a predictor (with ``.network`` and
#: ``.batch_slices`` for the forward-only timings)
BACKENDS = {
    "torch": build_torch_predictor,
    "onnxruntime": build_onnxruntime_predictor,
    "onnxruntime-int8": lambda *args: build_onnxruntime_predictor(*args, int8=True),
}


def build_predictor(network: str, batch_slices: int | None, device: str, bundle: Path, backend: str = "torch"):
    return BACKENDS[backend](network, batch_slices, device, bundle)


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


def slice_seconds(predictor: Predictor, image: str, repeats: int = 9) -> float:
    """Median seconds of one batch-1 forward pass on the volume's middle preprocessed slice."""
    img = predictor.preprocessing({"image": image})["image"].as_tensor()
    one = img[None, ..., img.shape[-1] // 2].contiguous().to(predictor.device)  # (1, C, H, W)
    times = []
    with torch.no_grad():
        predictor.network(one)
        for _ in range(repeats):
            _sync(predictor.device)
            start = time.perf_counter()
            predictor.network(one)
            _sync(predictor.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch_sweep(predictor: Predictor, image: str, batches=(1, 2, 4, 8, 16, 32), slices: int = 32) -> dict[str, float]:
    """Seconds per slice of the forward passes at each batch size (``slices`` slices per batch size, the batch
    sizes interleaved twice and the faster pass kept)."""
    img = predictor.preprocessing({"image": image})["image"].as_tensor()
    depth = img.shape[-1]
    stack = torch.stack([img[..., (depth // 2 + i) % depth] for i in range(max(batches))])  # (32, C, H, W)
    best: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(2):
            for b in batches:
                x = stack[:b].contiguous().to(predictor.device)
                predictor.network(x)
                rounds = max(1, slices // b)
                _sync(predictor.device)
                start = time.perf_counter()
                for _ in range(rounds):
                    predictor.network(x)
                _sync(predictor.device)
                per_slice = (time.perf_counter() - start) / (rounds * b)
                best[str(b)] = min(best.get(str(b), float("inf")), per_slice)
    return best


def warm_up(predictor: Predictor, size: int) -> None:
    with torch.no_grad():
        predictor.network(torch.zeros(1, predictor.spec.in_channels, size, size, device=predictor.device))


def run_threads(args: argparse.Namespace, image: str, tmp: str, threads: int) -> dict:
    """Every network's end-to-end time (and the reference's forward times) with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    bundle = Path(args.bundle)
    report: dict = {"threads": threads, "load_average": [os.getloadavg()[0]], "networks": {}}
    if args.batch_sweep:
        predictor = build_predictor(args.reference, None, args.device, bundle)
        report["batch_sweep_seconds_per_slice"] = batch_sweep(predictor, image)
        report["fastest_batch"] = int(min(report["batch_sweep_seconds_per_slice"].items(), key=lambda kv: kv[1])[0])
        report["load_average"].append(os.getloadavg()[0])
        return report
    for name in args.networks:
        for backend in args.backends:
            predictor = build_predictor(name, args.batch_slices, args.device, bundle, backend)
            warm_up(predictor, min(args.size, 64))
            key = name if backend == "torch" else f"{name} ({backend})"
            entry: dict = {
                "backend": backend,
                "parameters": getattr(predictor, "exported_parameters", None)
                or sum(p.numel() for p in predictor.network.parameters()),
                "batch_slices": predictor.batch_slices,
            }
            if name == args.reference or args.forward_all:
                entry["slice_seconds"] = slice_seconds(predictor, image)
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
                entry["end_to_end_over_slices"] = best["seconds"] / (best["slices"] * entry["slice_seconds"])
            report["networks"][key] = entry
            print(f"{threads} thread(s) " + _line(key, entry), file=sys.stderr, flush=True)
            del predictor
    report["load_average"].append(os.getloadavg()[0])
    ref = report["networks"].get(args.reference)
    if ref is not None:
        report["end_to_end_over_forward"] = ref.get("end_to_end_over_forward")
        report["end_to_end_over_slices"] = ref.get("end_to_end_over_slices")
        report["end_to_end_vs_reference"] = {
            name: e["end_to_end_seconds"] / ref["end_to_end_seconds"] for name, e in report["networks"].items()
        }
    return report


def run(args: argparse.Namespace) -> dict:
    """The report: one entry per thread count (``by_threads``); with one thread count its keys are also at the top."""
    args.device = str(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    shape = (args.size, args.size, args.slices)
    threads = args.threads or [torch.get_num_threads()]
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        image = make_volume(Path(tmp) / "volume.nii.gz", shape)
        report: dict = {
            "volume": list(shape),
            "bundle": Path(args.bundle).name,
            "device": args.device,
            "repeats": args.repeats,
            "reference": args.reference,
            "goal_end_to_end_over_forward": 1.5,
            "goal_end_to_end_over_slices": 1.3,
            "by_threads": {str(t): run_threads(args, image, tmp, t) for t in threads},
        }
    if len(threads) == 1:
        report.update(report["by_threads"][str(threads[0])])
    return report


def _line(name: str, e: dict) -> str:
    fwd = (
        f"forward {e['forward_seconds']:.2f} s, slice {e['slice_seconds'] * 1e3:.0f} ms, "
        f"ratios {e['end_to_end_over_forward']:.3f} / {e['end_to_end_over_slices']:.3f}, "
        if "forward_seconds" in e
        else ""
    )
    return (
        f"{name:12s} end-to-end {e['end_to_end_seconds']:.2f} s ({e['volumes_per_minute']:.2f} volumes/min), "
        f"{fwd}steps {e['steps']}"
    )


def print_table(report: dict) -> None:
    print(f"volume {'x'.join(map(str, report['volume']))}, bundle {report['bundle']}, device {report['device']}")
    for threads, part in report["by_threads"].items():
        load = " -> ".join(f"{v:.2f}" for v in part["load_average"])
        print(f"\n{threads} thread(s), load average {load}, best of {report['repeats']}")
        if "batch_sweep_seconds_per_slice" in part:
            sweep = part["batch_sweep_seconds_per_slice"]
            print(f"{report['reference']} forward ms per slice by batch size: " + ", ".join(
                f"{b}: {v * 1e3:.0f}" for b, v in sweep.items()
            ) + f" -> fastest batch {part['fastest_batch']}")  # fmt: skip
            continue
        head = ("params", 11), ("batch", 5), ("e2e s", 8), ("fwd s", 8), ("slice ms", 8), ("e2e/fwd", 8)
        head += ("e2e/(n*slice)", 13), ("vol/min", 8), ("e2e vs ref", 10)
        print(f"{'network':29s} " + " ".join(f"{h:>{w}s}" for h, w in head))
        for name, e in part["networks"].items():
            has = "forward_seconds" in e
            cells = [
                f"{e['parameters']:11,d}",
                f"{e['batch_slices']:5d}",
                f"{e['end_to_end_seconds']:8.2f}",
                f"{e['forward_seconds']:8.2f}" if has else f"{'-':>8s}",
                f"{e['slice_seconds'] * 1e3:8.0f}" if has else f"{'-':>8s}",
                f"{e['end_to_end_over_forward']:8.3f}" if has else f"{'-':>8s}",
                f"{e['end_to_end_over_slices']:13.3f}" if has else f"{'-':>13s}",
                f"{e['volumes_per_minute']:8.3f}",
                f"{part.get('end_to_end_vs_reference', {}).get(name, float('nan')):10.2f}",
            ]
            print(f"{name:29s} " + " ".join(cells))
        ratio = part.get("end_to_end_over_slices")
        if ratio is not None:
            verdict = "meets" if ratio <= report["goal_end_to_end_over_slices"] else "MISSES"
            print(
                f"end-to-end / (slices x batch-1 slice forward) = {ratio:.3f} ({verdict} the <= 1.3 goal); "
                f"end-to-end / forward = {part['end_to_end_over_forward']:.3f}"
            )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(REPO / "bundles" / "onenet_heart"))
    p.add_argument("--size", type=int, default=320, help="in-plane size (default 320)")
    p.add_argument("--slices", type=int, default=130, help="axial slices (default 130)")
    p.add_argument(
        "--networks", nargs="+", default=["onenet_ed4", "basicunet"], help="registry names; NAME+plain: not optimised"
    )
    p.add_argument("--backends", nargs="+", default=["torch"], choices=sorted(BACKENDS))
    p.add_argument("--reference", default="onenet_ed4", help="network whose forward time alone is measured")
    p.add_argument("--forward-all", action="store_true", help="time the forward pass of every network")
    p.add_argument("--batch-slices", type=int, default=None, help="default: the Predictor's (1 on CPU)")
    p.add_argument("--batch-sweep", action="store_true", help="only time the reference's forward per batch size")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch thread counts (default: OMP_NUM_THREADS / torch's)"
    )
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

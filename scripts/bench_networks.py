#!/usr/bin/env python
"""CPU latency, GFLOP/s and memory of OneNet (plain and its inference copy) against U-Net4 and MONAI's small nets.

Times no-grad eval forward passes of one input, all networks of a preset in the same run, interleaved round by
round (``onenet_med.profiling.measure_latency``), once per thread count, and reports the median and minimum,
the true FLOPs of the plain network (``torch.utils.flop_counter``) and GFLOP/s = GFLOP / median time, and the
ratios with their targets.

Network names: any registry name (``onenet_med.networks.list_networks()``), with ``+fast`` for its inference copy
(``onenet_med.networks.optimize_for_inference``); ``segresnet`` (MONAI SegResNet, 2D, ``init_filters=8``: built here
when the registry has no such name); ``plainconvunet`` (nnU-Net's 2D PlainConvUNet) is listed as skipped when its
optional package is not installed.

Presets (targets of issues 2 and 9):

- ``table``: 1x3x256x256, 4 classes, paper widths: the issue's table (params, GFLOP, ms, GFLOP/s) for plain and
  fast OneNets beside the peers. Targets: onenet_ed4+fast <= 0.25x unet4's latency and >= 0.8x its GFLOP/s at
  every thread count; onenet_ed4 <= 0.35x unet4, onenet_e4 <= 0.8x unet4, onenet_ed4_s <= 1.3x onenet_ed4,
  onenet_ed4 memory <= unet4's.
- ``width16``: the demo's setting, 1x1x224x256, 4 classes, OneNets at width 16: onenet_ed4+fast faster than
  SegResNet (init_filters 8) at every thread count.

Usage::

    python scripts/bench_networks.py --preset table --threads 1 2 --repeats 7 [--json out.json] [--check]
    python scripts/bench_networks.py --preset width16 --threads 1 2 --repeats 15
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_networks.py --clock cpu   # less sensitive to other load
    python scripts/bench_networks.py --retain-memory   # malloc keeps freed memory, as Predictor does on CPU

On a shared machine the medians move with the load, and wall-clock ratios drift against the network with the
shorter operations (a thread descheduled by another process stalls every parallel region); the ratios of one
run are what to compare, and ``--clock cpu`` (process CPU time, waiting threads sleeping) gives ratios that
stay close to those of an idle machine. The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from onenet_med.engine.network_switches import retain_freed_cpu_memory  # noqa: E402
from onenet_med.networks import get_network, list_networks, optimize_for_inference  # noqa: E402
from onenet_med.profiling import (  # noqa: E402
    count_flops,
    count_parameters,
    measure_latency,
    parameter_bytes,
    peak_memory_bytes,
    write_json,
)

FAST = "+fast"
PRESETS: dict[str, dict[str, Any]] = {
    "table": {
        "shape": (1, 3, 256, 256),
        "out_channels": 4,
        "features": None,
        "networks": [
            "segresnet",
            "resnet34_unet",
            "basicunet",
            "onenet_ed4",
            "onenet_ed4+fast",
            "onenet_ed4_s",
            "onenet_ed4_s+fast",
            "onenet_ed4_ctx",
            "onenet_ed4_ctx+fast",
            "plainconvunet",
            "onenet_e4",
            "onenet_e4+fast",
            "unet4",
        ],
        # (numerator, denominator, quantity, comparison, limit)
        "targets": [
            ("onenet_ed4+fast", "unet4", "latency", "<=", 0.25),
            ("onenet_ed4+fast", "unet4", "gflops_per_s", ">=", 0.8),
            ("onenet_ed4", "unet4", "latency", "<=", 0.35),
            ("onenet_e4", "unet4", "latency", "<=", 0.8),
            ("onenet_ed4_s", "onenet_ed4", "latency", "<=", 1.3),
            ("onenet_ed4", "unet4", "memory", "<=", 1.0),
        ],
    },
    "width16": {
        "shape": (1, 1, 224, 256),
        "out_channels": 4,
        "features": 16,
        "networks": ["segresnet", "onenet_ed4", "onenet_ed4+fast", "onenet_e4+fast", "basicunet"],
        "targets": [("onenet_ed4+fast", "segresnet", "latency", "<", 1.0)],
    },
}


def build(name: str, in_channels: int, out_channels: int, features: int | None = None) -> nn.Module | None:
    """The network ``name`` in eval mode (``+fast``: its inference copy); None when its package is missing."""
    base = name.removesuffix(FAST)
    if base in list_networks():
        kwargs = {"features": features} if features and base.startswith(("onenet", "unet", "mobilenet")) else {}
        try:
            net = get_network(base, in_channels, out_channels, **kwargs).eval()
        except ImportError as error:  # an optional package (plainconvunet: nnU-Net's)
            print(f"{name}: skipped ({error})")
            return None
    elif base == "segresnet":
        from monai.networks.nets import SegResNet

        net = SegResNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, init_filters=8).eval()
    else:
        raise SystemExit(f"unknown network {name!r}: registry names (NAME or NAME+fast)")
    return optimize_for_inference(net) if name.endswith(FAST) else net


def run(
    networks: list[str],
    shape: tuple[int, ...],
    out_channels: int,
    features: int | None,
    threads: list[int],
    repeats: int,
    warmup: int,
    clock: str,
    memory: bool,
) -> dict[str, Any]:
    """Build, count and time ``networks`` (see the module docstring); returns the JSON-friendly results."""
    torch.manual_seed(0)
    built = {name: build(name, shape[1], out_channels, features) for name in networks}
    skipped = [name for name, net in built.items() if net is None]
    nets = {name: net for name, net in built.items() if net is not None}
    plain = {name: build(name.removesuffix(FAST), shape[1], out_channels, features) if FAST in name else net
             for name, net in nets.items()}  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    for name, net in nets.items():
        rows[name] = {
            "params": count_parameters(plain[name]),
            "gflops": count_flops(plain[name], shape) / 1e9,  # FLOPs of the plain network, also for +fast
            "threads": {},
        }
        if memory:
            rows[name]["memory_mb"] = (peak_memory_bytes(net, shape) + parameter_bytes(net)) / 1e6
    timer = time.perf_counter if clock == "wall" else time.process_time
    load_start = os.getloadavg()[0]
    for n_threads in threads:
        times = measure_latency(nets, shape, repeats=repeats, warmup=warmup, threads=n_threads, clock=timer)
        for name, samples in times.items():
            median = statistics.median(samples)
            rows[name]["threads"][str(n_threads)] = {
                "median_ms": median * 1e3,
                "min_ms": min(samples) * 1e3,
                "all_ms": [t * 1e3 for t in samples],
                "gflops_per_s": rows[name]["gflops"] / median,
            }
    return {
        "shape": list(shape),
        "out_channels": out_channels,
        "features": features,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "clock": clock,
        "load_average": [load_start, os.getloadavg()[0]],
        "torch": torch.__version__,
        "skipped": skipped,
        "networks": rows,
    }


def ratios(results: dict[str, Any], targets: list[tuple[str, str, str, str, float]]) -> list[dict[str, Any]]:
    """Each target's ratio per thread count (memory: once), and whether it is met."""
    rows = results["networks"]
    out = []
    for num, den, quantity, comparison, limit in targets:
        if num not in rows or den not in rows:
            continue
        if quantity == "memory":
            if "memory_mb" not in rows[num]:
                continue
            cases = [(None, rows[num]["memory_mb"] / rows[den]["memory_mb"], None)]
        else:
            cases = []
            for n_threads in rows[num]["threads"]:
                a, b = rows[num]["threads"][n_threads], rows[den]["threads"][n_threads]
                if quantity == "latency":
                    cases.append((n_threads, a["median_ms"] / b["median_ms"], a["min_ms"] / b["min_ms"]))
                else:
                    cases.append((n_threads, a["gflops_per_s"] / b["gflops_per_s"], None))
        for n_threads, value, value_min in cases:
            met = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[comparison]
            out.append(
                {
                    "ratio": f"{num}/{den}",
                    "quantity": quantity,
                    "threads": n_threads,
                    "median_ratio": value,
                    "min_ratio": value_min,
                    "target": f"{comparison} {limit}",
                    "limit": limit,
                    "met": met,
                }
            )
    return out


def print_report(results: dict[str, Any], checks: list[dict[str, Any]]) -> None:
    shape = "x".join(map(str, results["shape"]))
    width = f", OneNet/U-Net width {results['features']}" if results["features"] else ""
    kept = ", malloc keeps freed memory" if results.get("retain_memory") else ""
    print(
        f"input {shape}{width}{kept}, {results['repeats']} interleaved passes each, {results['clock']} clock, "
        f"load average {results['load_average'][0]:.2f} -> {results['load_average'][1]:.2f}, torch {results['torch']}"
    )
    threads = [str(t) for t in results["threads"]]
    head = f"{'network':20s} {'params M':>9s} {'GFLOP':>7s}"
    head += "".join(f" {'ms@' + t + 'T':>9s} {'min':>7s} {'GFLOP/s':>8s}" for t in threads)
    has_memory = any("memory_mb" in r for r in results["networks"].values())
    print(head + (f" {'memory MB':>10s}" if has_memory else ""))
    for name, row in results["networks"].items():
        line = f"{name:20s} {row['params'] / 1e6:9.2f} {row['gflops']:7.2f}"
        for t in threads:
            cell = row["threads"][t]
            line += f" {cell['median_ms']:9.1f} {cell['min_ms']:7.1f} {cell['gflops_per_s']:8.0f}"
        print(line + (f" {row['memory_mb']:10.1f}" if "memory_mb" in row else ""))
    if results["skipped"]:
        print(f"skipped (not in the registry): {', '.join(results['skipped'])}")
    print()
    for c in checks:
        where = f" @{c['threads']}T" if c["threads"] else ""
        extra = f" (ratio of minima {c['min_ratio']:.3f})" if c["min_ratio"] is not None else ""
        status = "ok" if c["met"] else "MISSED"
        ratio = f"{c['median_ratio']:.3f}{extra}"
        print(f"{c['quantity']:12s} {c['ratio'] + where:32s} {ratio}  target {c['target']}  {status}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="table")
    parser.add_argument("--networks", nargs="+", metavar="NAME", help="instead of the preset's (NAME or NAME+fast)")
    parser.add_argument("--size", type=int, help="square input size instead of the preset's")
    parser.add_argument("--features", type=int, help="OneNet/U-Net width instead of the preset's")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per network and thread count")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument(
        "--retain-memory",
        action="store_true",
        help="let malloc keep freed memory (onenet_med.engine.retain_freed_cpu_memory, as Predictor does on CPU) "
        "for all networks: no page faults for fresh activations",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (the targets' measure); cpu: CPU time of the process, less sensitive to other "
        "processes on a shared machine (run with OMP_WAIT_POLICY=PASSIVE so waiting threads do not spin)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.retain_memory and not retain_freed_cpu_memory():
        raise SystemExit("--retain-memory: this C library has no mallopt (glibc only)")
    preset = PRESETS[args.preset]
    shape = tuple(preset["shape"])
    if args.size:
        shape = (*shape[:2], args.size, args.size)
    results = run(
        args.networks or preset["networks"],
        shape,
        preset["out_channels"],
        args.features or preset["features"],
        args.threads,
        args.repeats,
        args.warmup,
        args.clock,
        memory=not args.no_memory,
    )
    checks = ratios(results, preset["targets"])
    results["preset"] = args.preset
    results["retain_memory"] = args.retain_memory
    results["ratios"] = checks
    print_report(results, checks)
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    if args.check and not all(c["met"] for c in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

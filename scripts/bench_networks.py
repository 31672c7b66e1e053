#!/usr/bin/env python
"""CPU speed and memory benchmark of OneNet against U-Net4 (the issue's performance targets).

Times no-grad eval forward passes of 1x3xSxS inputs (S = 256 by default) with ``torch.set_num_threads(2)``,
all networks in the same run, interleaved round by round (``onenet_med.profiling.measure_latency``), and
reports medians, minima and the ratios with their targets:

- onenet_ed4 / unet4 <= 0.35, onenet_e4 / unet4 <= 0.8, onenet_ed4_s / onenet_ed4 <= 1.3 (latency),
- onenet_ed4 peak inference memory <= unet4's (``onenet_med.profiling.peak_memory_bytes``: live tensors during
  the pass, plus parameters).

Usage::

    OMP_NUM_THREADS=2 python scripts/bench_networks.py --repeats 20 [--json bench.json] [--check]
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 python scripts/bench_networks.py --clock cpu

On a shared machine the medians move with the load, and wall-clock ratios drift against the network with the
shorter operations (a thread descheduled by another process stalls every parallel region); the ratios of one
run are what to compare, and ``--clock cpu`` (process CPU time, waiting threads sleeping) gives ratios that
stay close to those of an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from onenet_med.networks import get_network, list_networks  # noqa: E402
from onenet_med.profiling import measure_latency, parameter_bytes, peak_memory_bytes, write_json  # noqa: E402

DEFAULT_NETWORKS = ["unet4", "onenet_ed4", "onenet_ed4_s", "onenet_e4", "onenet_e4_s"]
# (numerator, denominator, quantity, limit)
TARGETS = [
    ("onenet_ed4", "unet4", "latency", 0.35),
    ("onenet_e4", "unet4", "latency", 0.8),
    ("onenet_ed4_s", "onenet_ed4", "latency", 1.3),
    ("onenet_ed4", "unet4", "memory", 1.0),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=DEFAULT_NETWORKS, choices=list_networks(), metavar="NAME")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per network (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (the targets' measure); cpu: CPU time of the process, less sensitive to other "
        "processes on a shared machine (run with OMP_WAIT_POLICY=PASSIVE so waiting threads do not spin)",
    )
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    nets = {name: get_network(name, 3, 4).eval() for name in args.networks}
    shape = (1, 3, args.size, args.size)
    memory = {name: peak_memory_bytes(net, shape) + parameter_bytes(net) for name, net in nets.items()}
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times = measure_latency(nets, shape, repeats=args.repeats, warmup=args.warmup, threads=args.threads, clock=clock)
    median = {name: statistics.median(t) for name, t in times.items()}
    minimum = {name: min(t) for name, t in times.items()}

    print(
        f"input 1x3x{args.size}x{args.size}, threads {args.threads}, {args.repeats} interleaved passes each, "
        f"{args.clock} clock, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'network':16s} {'median ms':>10s} {'min ms':>8s} {'memory MB':>10s}")
    for name in nets:
        print(f"{name:16s} {median[name] * 1e3:10.1f} {minimum[name] * 1e3:8.1f} {memory[name] / 1e6:10.1f}")

    ratios = []
    for num, den, quantity, limit in TARGETS:
        if num not in nets or den not in nets:
            continue
        if quantity == "latency":
            value, value_min = median[num] / median[den], minimum[num] / minimum[den]
        else:
            value = value_min = memory[num] / memory[den]
        ratios.append(
            {
                "ratio": f"{num}/{den}",
                "quantity": quantity,
                "median_ratio": value,
                "min_ratio": value_min,
                "limit": limit,
                "met": value <= limit,
            }
        )
    print()
    for r in ratios:
        status = "ok" if r["met"] else "MISSED"
        extra = f" (ratio of minima {r['min_ratio']:.3f})" if r["quantity"] == "latency" else ""
        print(f"{r['quantity']:8s} {r['ratio']:24s} {r['median_ratio']:.3f}{extra}  target <= {r['limit']}  {status}")

    if args.json:
        result = {
            "threads": args.threads,
            "size": args.size,
            "repeats": args.repeats,
            "clock": args.clock,
            "load_average": os.getloadavg()[0],
            "latency_ms": {n: [t * 1e3 for t in ts] for n, ts in times.items()},
            "median_ms": {n: v * 1e3 for n, v in median.items()},
            "memory_mb": {n: v / 1e6 for n, v in memory.items()},
            "ratios": ratios,
        }
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.check and not all(r["met"] for r in ratios):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

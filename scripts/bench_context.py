#!/usr/bin/env python
"""Cost of OneNet's image-wide context: onenet_ed4_ctx against onenet_ed4 (and ed5), in the same run.

For each pair (plain network, its ``_ctx`` variant) it prints the parameters, the FLOPs at 1x3xSxS
(``torch.utils.flop_counter``, S = 256 and 512) and the CPU latency of no-grad forward passes at 1 and 2 threads,
of the inference copy (``optimize_for_inference``, what prediction runs) and of the plain network, all networks
interleaved round by round (``onenet_med.profiling.measure_latency``), then the ratios with the targets:

- FLOPs of onenet_ed4_ctx <= 1.05 x onenet_ed4 at 1x3x256x256,
- latency of onenet_ed4_ctx <= 1.10 x onenet_ed4 (inference copies, median, each thread count).

Usage::

    python scripts/bench_context.py --repeats 30 [--threads 1 2] [--clock cpu] [--json out.json] [--check]

On a shared machine the medians move with the load; the ratios of one run are what to compare (``--clock cpu``
counts the process's CPU time and is less sensitive to other processes; run it with OMP_WAIT_POLICY=PASSIVE).
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

from onenet_med.networks import get_network, optimize_for_inference  # noqa: E402
from onenet_med.profiling import count_flops, count_parameters, measure_latency, write_json  # noqa: E402

PAIRS = [("onenet_ed4", "onenet_ed4_ctx"), ("onenet_ed5", "onenet_ed5_ctx")]
FLOPS_LIMIT = 1.05  # onenet_ed4_ctx / onenet_ed4 at 256 x 256
LATENCY_LIMIT = 1.10  # inference copies, median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", type=int, default=[4, 5], choices=[4, 5], help="OneNet-ed levels")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per network and thread count")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="latency input 1x3xSxS")
    parser.add_argument("--width", type=int, default=64, help="base width (features) of the networks")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)

    pairs = [p for p in PAIRS if int(p[0][-1]) in args.levels]
    names = [n for p in pairs for n in p]
    torch.manual_seed(0)
    nets = {n: get_network(n, 3, 4, features=args.width).eval() for n in names}
    size = {n: {"params": count_parameters(net)} for n, net in nets.items()}
    for n, net in nets.items():
        for s in (256, 512):
            size[n][f"gflops_{s}"] = count_flops(net, (1, 3, s, s)) / 1e9
    timed = {f"{n} optimized": optimize_for_inference(net) for n, net in nets.items()}
    timed.update({f"{n} plain": net for n, net in nets.items()})
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load_start = os.getloadavg()[0]
    latency = {
        t: measure_latency(timed, (1, 3, args.size, args.size), args.repeats, args.warmup, t, clock=clock)
        for t in args.threads
    }
    load_end = os.getloadavg()[0]

    print(
        f"width {args.width}, input 1x3x{args.size}x{args.size}, {args.repeats} interleaved passes per network, "
        f"{args.clock} clock, "
        f"load average {load_start:.2f} at the start, {load_end:.2f} at the end"
    )
    head = f"{'network':16s} {'params':>11s} {'GFLOPs@256':>11s} {'GFLOPs@512':>11s}"
    for t in args.threads:
        head += f" {f'opt ms {t}t':>11s} {f'plain ms {t}t':>12s}"
    print(head)
    median = {t: {k: statistics.median(v) * 1e3 for k, v in latency[t].items()} for t in args.threads}
    for n in names:
        line = f"{n:16s} {size[n]['params']:11,d} {size[n]['gflops_256']:11.2f} {size[n]['gflops_512']:11.2f}"
        for t in args.threads:
            line += f" {median[t][f'{n} optimized']:11.1f} {median[t][f'{n} plain']:12.1f}"
        print(line)

    ratios = []
    print()
    for base, ctx in pairs:
        flops = size[ctx]["gflops_256"] / size[base]["gflops_256"]
        limit = FLOPS_LIMIT if base == "onenet_ed4" else None
        ratios.append({"ratio": f"{ctx}/{base}", "quantity": "flops@256", "value": flops, "limit": limit})
        ratios.append(
            {"ratio": f"{ctx}/{base}", "quantity": "params", "value": size[ctx]["params"] / size[base]["params"]}
        )
        for t in args.threads:
            for path in ("optimized", "plain"):
                value = median[t][f"{ctx} {path}"] / median[t][f"{base} {path}"]
                limit = LATENCY_LIMIT if base == "onenet_ed4" and path == "optimized" else None
                ratios.append({"ratio": f"{ctx}/{base}", "quantity": f"latency {path} {t}t", "value": value})
                ratios[-1]["limit"] = limit
    missed = False
    for r in ratios:
        limit = r.get("limit")
        status = "" if limit is None else (f"target <= {limit}  " + ("ok" if r["value"] <= limit else "MISSED"))
        missed |= limit is not None and r["value"] > limit
        print(f"{r['ratio']:28s} {r['quantity']:22s} {r['value']:.3f}  {status}")
    if args.json:
        write_json(
            {
                "size": args.size,
                "width": args.width,
                "repeats": args.repeats,
                "clock": args.clock,
                "load_average": [load_start, load_end],
                "networks": size,
                "latency_ms": {t: {k: [x * 1e3 for x in v] for k, v in latency[t].items()} for t in args.threads},
                "median_ms": median,
                "ratios": ratios,
            },
            args.json,
        )
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())

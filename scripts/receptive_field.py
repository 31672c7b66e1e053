#!/usr/bin/env python
"""Measured receptive field of every registry network (gradient probe, ``onenet_med.profiling.receptive_field``).

For each network it takes one output pixel of a 1x3xSxS input (default: the centre of 512x512, and the top-left
corner) and reports the input pixels that change its logits: the bounding box (rows x columns) and the share of
the image. The field is a property of the architecture, not of the width, so networks with a base width are
built narrow (``--width``, default 8) to keep the probe quick.

Usage::

    python scripts/receptive_field.py [--size 512] [--networks onenet_ed4 onenet_ed4_ctx ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from onenet_med.compare import network_overrides  # noqa: E402
from onenet_med.networks import get_network, list_networks  # noqa: E402
from onenet_med.profiling import receptive_field, write_json  # noqa: E402


def _build(name: str, width: int) -> torch.nn.Module:
    overrides = {
        k.split("#", 1)[1]: v for k, v in network_overrides(name, width).items() if k.startswith("network_def#")
    }
    return get_network(name, 3, 4, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list_networks(), choices=list_networks(), metavar="NAME")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--width", type=int, default=8, help="base width of the networks that have one")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    s = args.size
    print(f"input 1x3x{s}x{s}; field of the centre pixel ({s // 2}, {s // 2}) and of the corner pixel (0, 0)")
    print(f"{'network':16s} {'centre: rows x cols':>20s} {'share':>7s} {'corner: rows x cols':>20s} {'share':>7s}")
    rows = {}
    for name in args.networks:
        try:
            net = _build(name, args.width)
        except ImportError as error:  # an optional package (plainconvunet: nnU-Net's)
            print(f"{name:16s} skipped: {error}")
            continue
        centre = receptive_field(net, (1, 3, s, s))
        corner = receptive_field(net, (1, 3, s, s), (0, 0))
        rows[name] = {"centre": centre, "corner": corner}
        cells = []
        for f in (centre, corner):
            box = "whole image" if f["whole_image"] else f"{f['height']} x {f['width']}"
            cells += [f"{box:>20s}", f"{f['fraction']:7.1%}"]
        print(f"{name:16s} " + " ".join(cells), flush=True)
    if args.json:
        write_json({"size": s, "width": args.width, "fields": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

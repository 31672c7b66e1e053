"""``onenet-med data``: ``check`` a dataset tree, build the ``demo`` task, ``download`` an MSD task."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    """Register ``onenet-med data {check,demo,download}``."""
    data = subparsers.add_parser("data", help="check, build or download datasets", description=__doc__)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    check = sub.add_parser("check", help="validate an MSD task, VOC tree or Pets tree; exit 1 on any error")
    check.add_argument("path", help="MSD task folder (or its parent), VOCdevkit/VOC2012 (or a parent), Pet folder")
    check.add_argument("--task", default=None, help="task to check against (default: recognised from the tree)")
    check.add_argument("--quick", action="store_true", help="headers only (no voxel values, NaN or corruption checks)")
    check.add_argument("--workers", type=int, default=1, help="threads reading files (default 1)")
    check.add_argument("--no-warnings", action="store_true", help="print errors only")
    check.set_defaults(func=_check)

    demo = sub.add_parser("demo", help="build the embedded MNI152 tissue demo task (MSD layout, offline)")
    demo.add_argument("--out", required=True, help="task folder to create, e.g. data/Task00_MNI152Tissue")
    demo.add_argument("--n-cases", type=int, default=4, help="axial slabs (cases), default 4")
    demo.add_argument("--step", type=int, default=1, help="keep every STEP-th voxel (1 = full 1 mm), default 1")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    demo.set_defaults(func=_demo)

    dl = sub.add_parser("download", help="download and extract an MSD task (heart, brain, lung)")
    dl.add_argument("--task", required=True, help="heart, brain or lung")
    dl.add_argument("--root", required=True, help="folder receiving <TaskXX_Name>.tar and <TaskXX_Name>/")
    dl.set_defaults(func=_download)


def _check(args: argparse.Namespace) -> int:
    from onenet_med.data.check import check_dataset

    try:
        report = check_dataset(
            args.path, task=args.task, level="header" if args.quick else "full", num_workers=args.workers
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    for p in report.problems:
        if p.severity == "error" or not args.no_warnings:
            print(p)
    print(report.summary())
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from onenet_med.data.demo import build_demo_dataset

    try:
        out = build_demo_dataset(args.out, n_cases=args.n_cases, step=args.step, overwrite=args.overwrite)
    except (FileExistsError, ValueError, ModuleNotFoundError, FileNotFoundError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"demo task written to {out}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from onenet_med.data.msd import download_msd

    try:
        out = download_msd(args.task, args.root)
    except (KeyError, ValueError, RuntimeError, OSError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"{args.task}: {out}")
    return 0

"""``onenet-med bundle``: keep the bundles' generated files in sync with ``bundles/common`` and export a bundle as a
zip that ``monai.bundle`` uses as downloaded."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    """Register ``onenet-med bundle sync`` and ``onenet-med bundle export``."""
    p = subparsers.add_parser("bundle", help="generate the bundles' shared files; export a bundle as a zip")
    verbs = p.add_subparsers(dest="bundle_command", metavar="VERB", required=True)

    sync = verbs.add_parser(
        "sync",
        help="write bundles/common into every bundle folder (configs, LICENSE); --check: only report differences",
        description="Copy the shared files of bundles/common into every bundle (configs/inference.json made to run "
        "alone); exit 1 with --check when a bundle differs.",
    )
    sync.add_argument("--bundles", default="bundles", help="folder holding common/ and the bundles (default: bundles)")
    sync.add_argument("--check", action="store_true", help="write nothing; exit 1 when a bundle is out of date")
    sync.set_defaults(func=_sync)

    export = verbs.add_parser(
        "export",
        help="zip a bundle (configs, docs, LICENSE, models/model.pt, model.ts, task.json) for monai.bundle",
        description="Write <out>/<name>_v<version>.zip holding the folder <name>/, as monai.bundle download "
        "extracts it.",
    )
    export.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/onenet_heart")
    export.add_argument("--out", required=True, help="output folder of the zip (created when missing)")
    export.set_defaults(func=_export)


def _sync(args: argparse.Namespace) -> int:
    from onenet_med.bundle.sync import sync_bundles

    try:
        changed = sync_bundles(args.bundles, check=args.check)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    for path in changed:
        print(f"{'out of date' if args.check else 'written'}: {path}")
    if args.check and changed:
        print(f"{len(changed)} file(s) differ from {args.bundles}/common: run onenet-med bundle sync", file=sys.stderr)
        return 1
    print(f"bundles in {args.bundles}: {'in sync' if not changed else f'{len(changed)} file(s) written'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from onenet_med.bundle.export import export_bundle

    try:
        path = export_bundle(args.bundle, args.out)
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0

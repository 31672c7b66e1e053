"""The ``onenet-med`` command line: a thin layer over the package's Python API.

Each sub-command lives next to the code it drives and registers itself through an
``add_parser(subparsers)`` function that sets ``func`` on its parser; this module only
collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from onenet_med.switches import SwitchArgumentParser

# modules that contribute sub-commands (each defines ``add_parser(subparsers)``)
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "onenet_med.data.cli",
    "onenet_med.profiling",
    "onenet_med.inference.cli",
    "onenet_med.inference.export",
    "onenet_med.compare",
    "onenet_med.bundle.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every registered sub-command."""
    from onenet_med import __version__

    # flags of every sub-command also take a switch value: --overwrite false, --no-progress=1
    parser = SwitchArgumentParser(prog="onenet-med", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onenet-med {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

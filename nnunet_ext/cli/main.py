"""``nnunet-ext`` console script: one sub-command per module in :data:`COMMANDS`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func=run`` (``run(args) -> int``). Heavy imports happen inside ``run``, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command modules in nnunet_ext.cli, in the order ``--help`` lists them
COMMANDS = ["trainers", "summary", "plan", "demo", "evaluate", "compare", "benchmark", "benchmark_scan", "gpu_check"]


def version_line() -> str:
    """``nnunet-ext X (nnunetv2 Y, torch Z)`` from the installed metadata (nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from nnunet_ext import __version__

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"
    return f"nnunet-ext {__version__} (nnunetv2 {installed('nnunetv2')}, torch {installed('torch')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-ext",
        description="UNETR++, SegMamba, SegResMamba and MISSU as nnU-Net v2 trainers. "
                    "Train them with the stock nnUNetv2_* commands (-tr NAME); these helpers list, "
                    "size, demo and evaluate them.")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the versions of nnunet-ext, nnU-Net and PyTorch and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"nnunet_ext.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Command-line entry point: one sub-command per module in core.cli."""
from __future__ import annotations

import argparse
import logging
import sys

from ..data.io import DataError
from ..checkpoint import CheckpointError
from . import annotate_cmds, classifier_cmds, crop_cmds, data_cmds, delineate_cmds, fewshot_cmds, supervised_cmds

COMMAND_MODULES = (data_cmds, fewshot_cmds, supervised_cmds, classifier_cmds, crop_cmds, annotate_cmds, delineate_cmds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="PANet++ Studio command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

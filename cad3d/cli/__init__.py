"""The `cad3d` command line: a thin layer that parses arguments and calls library functions.

Each command group lives in its own module with `add_parser(subparsers)`; the parser it adds
sets `func(args) -> int`. Exit codes: 0 success, 1 failure (one-line cause on stderr), 2 usage
(argparse: a bad flag or value). A closed stdout (``cad3d ... | head``) ends the command quietly
with 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cad3d import __version__
from cad3d.errors import Cad3dError

# Command groups, in the order `cad3d --help` lists them. A module missing here is a group
# not built yet; it is skipped so the others keep working.
_GROUPS = ["data", "train", "ckpt", "convert", "eval", "plot", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cad3d",
        description="Turn 2D CAD drawings into 3D point clouds, and train the models that do it.",
    )
    parser.add_argument("--version", action="version", version=f"cad3d {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _GROUPS:
        try:
            module = importlib.import_module(f"cad3d.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cad3d.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here
        return code
    except BrokenPipeError:
        # The reader of our stdout closed it (`cad3d ckpt inspect F | head`): stop quietly. Point
        # stdout at devnull so the flush at interpreter exit does not raise again (Python docs,
        # "Note on SIGPIPE").
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured)
        pass


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version print to stdout, then exit
        if exc.code in (0, None):
            sys.stdout.flush()
        raise
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except Cad3dError as exc:
        print(f"cad3d: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cad3d: interrupted", file=sys.stderr)
        return 130

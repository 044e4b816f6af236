"""The sparse-rt command line: one module per subcommand, each with add_parser(sub) and run(args).
Every error leaves through main: one line on stderr, exit status 2."""

import argparse
import os
import sys

from ..ingest import IngestError
from ..io import SrtError
from . import bench, convert, demo, export, inspect

SUBCOMMANDS = (demo, convert, inspect, bench, export)
# What bad input raises (unreadable files, unknown names, missing optional packages), as opposed
# to a bug, whose traceback is worth seeing.
USER_ERRORS = (ValueError, OSError, KeyError, ImportError, IngestError, SrtError)


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments end like every other error: one line on stderr, exit status 2 (argparse's own
    error() prints the whole usage first). Subcommand parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    parser = _OneLineParser(prog="sparse-rt", description="sparse inference runtime for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    args = parser.parse_args(argv)
    # `--arch pkg.module:factory` imports from the current directory too, from the `sparse-rt`
    # script as from `python -m sparse_rt` (whose sys.path starts with it); last, so it shadows nothing.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return args.run(args)
    except USER_ERRORS as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"sparse-rt {args.command}: error: {message}", file=sys.stderr)
        return 2

"""The sparse-rt command line. Each subcommand registers itself in `_SUBCOMMANDS`."""

import argparse
import sys


def _demo(sub):
    p = sub.add_parser("demo", help="prune a zoo model, convert it, check it and time it against dense")
    from .demo import DEMO_INPUTS

    p.add_argument("--model", default="bert_encoder", choices=sorted(DEMO_INPUTS))
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--time", type=float, default=2.0, help="seconds of timing per engine")

    def run(args):
        from .demo import run_demo

        result = run_demo(args.model, args.sparsity, args.batch, args.time)
        return 0 if result["max_rel_diff"] <= 1e-4 else 1

    p.set_defaults(run=run)


_SUBCOMMANDS = [_demo]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="sparse-rt", description="sparse inference runtime for PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"sparse-rt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

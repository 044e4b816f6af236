"""`sparse-rt demo`: prune a zoo model, convert it, check it and time it against dense."""

from .. import models
from ..demo import run_demo
from .args import non_negative_float, positive_int


def add_parser(sub):
    p = sub.add_parser("demo", help="prune a zoo model, convert it, check it and time it against dense")
    p.add_argument("--model", default="bert_encoder", choices=models.names())
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--time", type=non_negative_float, default=2.0, help="seconds of timing per engine")
    p.set_defaults(run=run)


def run(args):
    result = run_demo(args.model, args.sparsity, args.batch, args.time)
    return 0 if result["max_rel_diff"] <= 1e-4 else 1

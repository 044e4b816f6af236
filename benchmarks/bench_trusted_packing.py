"""Trusted packings (sparse_rt.ops.trusted_packings) against the default, and which trusted layers
should pack, in one process, taking turns (in_process_ab.py).

A zoo model is magnitude-pruned, sparsify()d and fuse()d, then run under four settings:
  default              every packing compared with its weight on each call; layers pack from
                       PACKING_MIN_ROWS input rows, those of density PACKING_MIN_DENSITY and
                       more from PACKING_MIN_ROWS_DENSE
  trusted              trusted packings as shipped: layers of density PACKING_MIN_DENSITY
                       and more pack from PACKING_MIN_ROWS_TRUSTED rows
  trusted-any-density  trusted, every layer packing from PACKING_MIN_ROWS_TRUSTED rows
  trusted-unpacked     trusted, no layer packing
All four compute the same sums (checked equal before the timing), so the ratios are the packing's
and the comparison's alone.

    python benchmarks/bench_trusted_packing.py    # writes benchmarks/results/trusted-packing-DATE.json
"""

import argparse
import contextlib

import torch
from in_process_ab import add_arguments, bench_model, print_report, write_report  # beside this file

from sparse_rt import ops
from sparse_rt.machine import load_average
from sparse_rt.nn import packing as packing_module

NEVER = 1 << 62  # more rows than any input has


@contextlib.contextmanager
def _packing_rule(min_rows, min_density):
    """The trusted layers' packing rule (sparse_rt/nn/packing.py) changed for the block."""
    saved = packing_module.PACKING_MIN_ROWS_TRUSTED, packing_module.PACKING_MIN_DENSITY
    packing_module.PACKING_MIN_ROWS_TRUSTED, packing_module.PACKING_MIN_DENSITY = min_rows, min_density
    try:
        yield
    finally:
        packing_module.PACKING_MIN_ROWS_TRUSTED, packing_module.PACKING_MIN_DENSITY = saved


def settings(model, x):
    def trusted(rule=None):
        def run():
            with ops.trusted_packings(), (_packing_rule(*rule) if rule else contextlib.nullcontext()):
                return model(x)
        return run

    return {"default": lambda: model(x),
            "trusted": trusted(),
            "trusted-any-density": trusted((packing_module.PACKING_MIN_ROWS_TRUSTED, 0.0)),
            "trusted-unpacked": trusted((NEVER, 0.0))}


def bench(model_name, sparsity, args):
    rows = bench_model(model_name, sparsity, args, settings)
    for row in rows:
        row["speedup_over_default"] = {name: row["p50_ms"]["default"] / ms for name, ms in row["p50_ms"].items()}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, models_default=["bert_encoder"], batch_default=[1, 8], min_time_default=20.0)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--out", default=None,
                        help="result file (default benchmarks/results/trusted-packing-DATE.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_load = load_average()
    rows = [row for name in args.models for sparsity in args.sparsity
            for row in bench(name, sparsity, args)]
    report, out = write_report(rows, args, start_load, "trusted-packing")
    names = list(rows[0]["p50_ms"]) if rows else []
    print_report(rows, {n: f"{n} ms" for n in names},
                 lambda r, n: f"{r['p50_ms'][n]:.1f} ({r['speedup_over_default'][n]:.2f}x)", report, out)


if __name__ == "__main__":
    main()

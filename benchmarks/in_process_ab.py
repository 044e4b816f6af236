"""Settings of one fused sparse_rt model timed in one process, taking turns: the harness of
bench_block_cache.py and bench_trusted_packing.py.

Each setting is a zero-argument callable running the model under it. Their outputs are checked equal
first (each setting must compute the same sums), then they take turns in blocks
(sparse_rt.timing.compare_latency_blocks: the first untimed calls of each block absorb the switch), so
that the host's drift over a run reaches every setting alike.
"""

import datetime
import json
import sys
import time
from pathlib import Path

import torch

import sparse_rt
from sparse_rt import models
from sparse_rt.inputs import example_input
from sparse_rt.machine import busy_warning, load_average, machine_info
from sparse_rt.timing import call_block, compare_latency_blocks, median

RESULTS = Path(__file__).resolve().parent / "results"


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def add_arguments(parser, *, models_default, batch_default, min_time_default):
    parser.add_argument("--models", nargs="+", default=models_default, choices=models.names())
    parser.add_argument("--batch", type=int, nargs="+", default=batch_default)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-calls", type=int, default=5, help="timed calls per turn")
    parser.add_argument("--min-time", type=float, default=min_time_default, help="seconds of rounds per configuration")
    parser.add_argument("--seed", type=int, default=0)


def pruned_model(model_name, sparsity, seed):
    """The zoo model magnitude-pruned (dense, the pruned weights zero), its weights drawn from `seed`."""
    torch.manual_seed(seed)
    return sparse_rt.magnitude_prune(models.create(model_name).eval(), sparsity,
                                     exclude=models.keep_dense(model_name)).eval()


def fused_model(model_name, sparsity, seed):
    """pruned_model sparsify()d and fuse()d: bench_engines.py's "sparse_rt-fused"."""
    shape = models.input_shape(model_name)
    pruned = pruned_model(model_name, sparsity, seed)
    model = sparse_rt.sparsify(pruned, example_inputs=(example_input(1, shape, seed=seed),)).eval()
    model.fuse()
    return model


def time_settings(settings, what, args, same_outputs=True):
    """({name: p50 ms}, {name: timed calls}) of `settings` ({name: callable}), after checking that they
    give equal outputs (unless not `same_outputs`: settings that compute other sums)."""
    outputs = {name: run() for name, run in settings.items()}
    first, *others = outputs
    for name in others:
        if same_outputs and not torch.equal(outputs[first], outputs[name]):
            raise AssertionError(f"{what}: the outputs of {first} and {name} differ")
    samples = compare_latency_blocks({name: call_block(run) for name, run in settings.items()},
                                     block_calls=args.block_calls, min_time=args.min_time)
    return {name: median(s) * 1e3 for name, s in samples.items()}, {name: len(s) for name, s in samples.items()}


def bench_model(model_name, sparsity, args, settings_of, measure_more=None, same_outputs=True):
    """One row {model, sparsity, batch, p50_ms, samples, ...} per batch size in args.batch: the fused model timed
    under settings_of(model, x) (checked to give equal outputs, unless not `same_outputs`), and
    measure_more(settings) merged into the row where given."""
    shape = models.input_shape(model_name)
    model = fused_model(model_name, sparsity, args.seed)
    rows = []
    with torch.inference_mode():
        for batch in args.batch:
            settings = settings_of(model, example_input(batch, shape, seed=args.seed))
            p50, counts = time_settings(settings, f"{model_name} {sparsity:g} batch {batch}", args, same_outputs)
            rows.append({"model": model_name, "sparsity": sparsity, "batch": batch, "p50_ms": p50,
                         "samples": counts, **(measure_more(settings) if measure_more else {})})
            log(f"{model_name} {sparsity:g} batch {batch}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in p50.items()))
    return rows


def write_report(rows, args, start_load, stem):
    """Writes {date, command, machine, load, warning, results: rows} to args.out (default
    results/STEM-DATE.json) and returns the report and its path."""
    end_load = load_average()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "threads": args.threads, "machine": machine_info(),
              "load": {"start": start_load, "end": end_load},
              "warning": busy_warning(start_load, end_load, args.threads), "results": rows}
    out = Path(args.out or RESULTS / f"{stem}-{datetime.date.today()}.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report, out


def print_report(rows, columns, cell, report, out):
    """rows as a markdown table (model, sparsity, batch, then cell(row, name) under each header of `columns`,
    {name: header}), the report's load warning and where it was written."""
    print("| model | sparsity | batch | " + " | ".join(columns.values()) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for r in rows:
        print(f"| {r['model']} | {r['sparsity']:g} | {r['batch']} | " + " | ".join(cell(r, n) for n in columns) + " |")
    if report["warning"]:
        print(f"WARNING: {report['warning']}")
    print(f"wrote {out}")

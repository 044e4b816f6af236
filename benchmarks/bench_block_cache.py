"""The CPU ops' block cache (csrc/torch/cpu/block_cache.h) on and off, in one process, taking turns.

A zoo model is magnitude-pruned, sparsify()d and fuse()d (the "sparse_rt-fused" engine of
bench_engines.py), then timed with the cache at the limit the process starts with ("cache") and at limit 0
("no-cache": every block goes back to glibc when its tensor dies, as before the cache existed).
The two take turns in blocks (sparse_rt.timing.compare_latency_blocks; the first untimed calls of
each block absorb the switch), and their outputs are checked equal first. Minor page faults per
forward are counted for each after the timing.

    python benchmarks/bench_block_cache.py    # writes benchmarks/results/block-cache-DATE.json
"""

import argparse
import datetime
import json
import resource
import sys
import time
from pathlib import Path

import torch

import sparse_rt
from sparse_rt import models, ops
from sparse_rt.inputs import example_input
from sparse_rt.machine import busy_warning, load_average, machine_info
from sparse_rt.timing import call_block, compare_latency_blocks, median


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _with_limit(limit, forward):
    def run():
        ops.set_cpu_cache_limit(limit)
        return forward()
    return run


def _faults_per_forward(run, calls=3):
    run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def bench(model_name, sparsity, batches, limit, args):
    shape = models.input_shape(model_name)
    torch.manual_seed(args.seed)
    pruned = sparse_rt.magnitude_prune(models.create(model_name).eval(), sparsity,
                                       exclude=models.keep_dense(model_name)).eval()
    model = sparse_rt.sparsify(pruned, example_inputs=(example_input(1, shape, seed=args.seed),)).eval()
    model.fuse()
    rows = []
    with torch.inference_mode():
        for batch in batches:
            x = example_input(batch, shape, seed=args.seed)
            engines = {"cache": _with_limit(limit, lambda: model(x)),
                       "no-cache": _with_limit(0, lambda: model(x))}
            if not torch.equal(engines["cache"](), engines["no-cache"]()):
                raise AssertionError(f"{model_name} batch {batch}: outputs differ with and without the cache")
            samples = compare_latency_blocks({name: call_block(run) for name, run in engines.items()},
                                             block_calls=args.block_calls, min_time=args.min_time)
            p50 = {name: median(s) * 1e3 for name, s in samples.items()}
            faults = {name: _faults_per_forward(run) for name, run in engines.items()}
            rows.append({"model": model_name, "sparsity": sparsity, "batch": batch, "p50_ms": p50,
                         "samples": {name: len(s) for name, s in samples.items()},
                         "page_faults_per_forward": faults, "speedup": p50["no-cache"] / p50["cache"]})
            log(f"{model_name} {sparsity:g} batch {batch}: cache {p50['cache']:.1f} ms, no cache "
                f"{p50['no-cache']:.1f} ms ({rows[-1]['speedup']:.2f}x); faults per forward {faults['cache']:.0f} "
                f"against {faults['no-cache']:.0f}")
    ops.set_cpu_cache_limit(limit)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "bert_encoder"], choices=models.names())
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-calls", type=int, default=5, help="timed calls per turn")
    parser.add_argument("--min-time", type=float, default=20.0, help="seconds of rounds per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/block-cache-DATE.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_load = load_average()
    limit = ops.cpu_cache_stats()["limit_bytes"]  # the default, or SPARSE_RT_CPU_CACHE_LIMIT_MB's
    rows = [row for name in args.models for row in bench(name, args.sparsity, args.batch, limit, args)]
    end_load = load_average()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "threads": args.threads, "machine": machine_info(),
              "load": {"start": start_load, "end": end_load},
              "warning": busy_warning(start_load, end_load, args.threads), "results": rows}
    out = Path(args.out or Path(__file__).parent / "results" / f"block-cache-{datetime.date.today()}.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("| model | sparsity | batch | cache ms | no cache ms | speedup | faults per forward (cache / no cache) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        p, f = r["p50_ms"], r["page_faults_per_forward"]
        print(f"| {r['model']} | {r['sparsity']:g} | {r['batch']} | {p['cache']:.1f} | {p['no-cache']:.1f} | "
              f"{r['speedup']:.2f}x | {f['cache']:.0f} / {f['no-cache']:.0f} |")
    if report["warning"]:
        print(f"WARNING: {report['warning']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

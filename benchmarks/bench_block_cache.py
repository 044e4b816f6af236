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
import resource

import torch
from in_process_ab import add_arguments, bench_model, print_report, write_report  # beside this file

from sparse_rt import ops
from sparse_rt.machine import load_average


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


def bench(model_name, sparsity, limit, args):
    def settings(model, x):
        return {"cache": _with_limit(limit, lambda: model(x)), "no-cache": _with_limit(0, lambda: model(x))}

    def faults(engines):
        return {"page_faults_per_forward": {name: _faults_per_forward(run) for name, run in engines.items()}}

    rows = bench_model(model_name, sparsity, args, settings, faults)
    for row in rows:
        row["speedup"] = row["p50_ms"]["no-cache"] / row["p50_ms"]["cache"]
    ops.set_cpu_cache_limit(limit)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, models_default=["resnet50", "bert_encoder"], batch_default=[1, 8], min_time_default=20.0)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/block-cache-DATE.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_load = load_average()
    limit = ops.cpu_cache_stats()["limit_bytes"]  # the default, or SPARSE_RT_CPU_CACHE_LIMIT_MB's
    rows = [row for name in args.models for row in bench(name, args.sparsity, limit, args)]
    report, out = write_report(rows, args, start_load, "block-cache")
    cells = {"cache": lambda r: f"{r['p50_ms']['cache']:.1f}", "no-cache": lambda r: f"{r['p50_ms']['no-cache']:.1f}",
             "speedup": lambda r: f"{r['speedup']:.2f}x",
             "faults": lambda r: "{cache:.0f} / {no-cache:.0f}".format_map(r["page_faults_per_forward"])}
    print_report(rows, {"cache": "cache ms", "no-cache": "no cache ms", "speedup": "speedup",
                        "faults": "faults per forward (cache / no cache)"}, lambda r, name: cells[name](r), report, out)


if __name__ == "__main__":
    main()

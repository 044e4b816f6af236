"""Sparse weights stored in 16 bits (SparseModel.store_weights) against fp32 ones, fp32 activations
throughout, in one process, taking turns (in_process_ab.py).

A zoo model is magnitude-pruned, sparsify()d and fuse()d; copies of it keep their sparse layers' values
in bf16 and in fp16. Per setting: p50 latency, the bytes of the sparse layers' weights (indices, values,
biases) and the output's largest difference from the fp32 weights' output, relative to its largest
magnitude.

    python benchmarks/bench_weight_storage.py    # writes benchmarks/results/weight-storage-DATE.json
"""

import argparse
import copy

import torch
from in_process_ab import add_arguments, bench_model, print_report, write_report  # beside this file

from sparse_rt.machine import load_average
from sparse_rt.nn._sparse_weight import SparseWeightModule

STORAGE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _weight_bytes(model):
    return sum(t.nbytes for m in model.modules() if isinstance(m, SparseWeightModule)
               for t in (m.crow_indices, m.col_indices, m.values, m.bias) if t is not None)


def bench(model_name, sparsity, args):
    copies = {}

    def settings(model, x):
        if not copies:
            copies.update({name: copy.deepcopy(model).store_weights(dtype) for name, dtype in STORAGE.items()})
        return {name: (lambda m=m: m(x)) for name, m in copies.items()}

    def measure_more(runs):
        outputs = {name: run() for name, run in runs.items()}
        fp32 = outputs["fp32"]
        scale = fp32.abs().max().item()
        return {"max_rel_diff": {name: (y - fp32).abs().max().item() / scale for name, y in outputs.items()},
                "weight_bytes": {name: _weight_bytes(m) for name, m in copies.items()}}

    rows = bench_model(model_name, sparsity, args, settings, measure_more, same_outputs=False)
    for row in rows:
        row["speedup_over_fp32"] = {name: row["p50_ms"]["fp32"] / ms for name, ms in row["p50_ms"].items()}
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, models_default=["bert_encoder", "resnet50"], batch_default=[1, 8], min_time_default=20.0)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9])
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/weight-storage-DATE.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_load = load_average()
    rows = [row for name in args.models for sparsity in args.sparsity for row in bench(name, sparsity, args)]
    report, out = write_report(rows, args, start_load, "weight-storage")
    print_report(rows, {n: f"{n}: ms (x fp32), MB, max rel diff" for n in STORAGE},
                 lambda r, n: f"{r['p50_ms'][n]:.1f} ({r['speedup_over_fp32'][n]:.2f}x), "
                              f"{r['weight_bytes'][n] / 1e6:.1f}, {r['max_rel_diff'][n]:.1e}", report, out)


if __name__ == "__main__":
    main()

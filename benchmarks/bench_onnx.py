"""onnxruntime: the dense ONNX export vs sparse_rt's two flavours, file sizes and latency (batch 1 by default).

    python benchmarks/bench_onnx.py                      # ResNet-50 and BERT-base encoder at 90%
    python benchmarks/bench_onnx.py --models resnet50 --runs 32 --threads 2
    python benchmarks/bench_onnx.py --models bert_encoder --sparsity 0.95 --batch 8

Each model is magnitude-pruned (first conv left dense), converted, and exported three times:
dense (torch.onnx.export of the pruned nn.Module), portable and sparse. The sparse file runs on
the native kernels (also without packing the weights' nonzeros) and on the Python ops. The
sessions run the same input taking turns in blocks, after warm-up; medians are reported. Writes
benchmarks/results/onnx-DATE.json with the machine, versions, thread settings and every figure.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata

import torch

import sparse_rt
import sparse_rt.onnx
from sparse_rt import models

SPARSE_KERNELS = ("native", "python")
PACKING_VARIABLE = "SPARSE_RT_PACK_NONZEROS"
MODELS = {"resnet50": ((1, 3, 224, 224), ("conv1",)), "bert_encoder": ((1, 128, 768), ())}
_WARMUP_PER_BLOCK, _TIMED_PER_BLOCK = 2, 8
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _versions():
    names = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-extensions", "numpy")
    out = {"python": platform.python_version(), "sparse_rt": sparse_rt.__version__}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _bytes(path):
    extra = path + ".data"
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)


@contextlib.contextmanager
def _unpacked_weights():
    """Native sessions made inside the block keep their weights unpacked (SPARSE_RT_PACK_NONZEROS=0,
    read when a session's kernels are made)."""
    saved = os.environ.get(PACKING_VARIABLE)
    os.environ[PACKING_VARIABLE] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PACKING_VARIABLE)
        else:
            os.environ[PACKING_VARIABLE] = saved


def bench_model(name, sparsity, batch, threads, runs, workdir, echo):
    one, keep_dense = MODELS[name]
    shape = (batch, *one[1:])
    torch.manual_seed(0)
    pruned = sparse_rt.magnitude_prune(models.create(name).eval(), sparsity, exclude=keep_dense)
    model = sparse_rt.sparsify(pruned).eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    paths = {flavor: os.path.join(workdir, f"{name}-{flavor}.onnx") for flavor in ("dense", "portable", "sparse")}
    torch.onnx.export(pruned, (x,), paths["dense"], dynamo=True, external_data=False, verbose=False)
    checks = {}
    for flavor in ("portable", "sparse"):
        result = sparse_rt.onnx.export(model, paths[flavor], x, flavor=flavor, check=True)
        checks[flavor] = result.max_rel_diff
        echo(f"  {result}")
    sizes = {flavor: _bytes(p) for flavor, p in paths.items()}

    options = dict(intra_op_num_threads=threads, inter_op_num_threads=1)
    sessions = {
        "dense": sparse_rt.onnx.session(paths["dense"], register_ops=False, **options),
        "portable": sparse_rt.onnx.session(paths["portable"], register_ops=False, **options),
    }
    # The sparse file on each way of running our ops that this build has (session's `kernels`), and
    # on the native kernels once more without packing the weights' nonzeros.
    for kernels in SPARSE_KERNELS:
        if kernels == "native" and sparse_rt.ops.onnxruntime_kernels_library() is None:
            continue
        sessions[f"sparse-{kernels}"] = sparse_rt.onnx.session(paths["sparse"], kernels=kernels, **options)
        if kernels == "native":
            with _unpacked_weights():
                sessions["sparse-native-unpacked"] = sparse_rt.onnx.session(paths["sparse"], kernels=kernels, **options)
    feed = x.numpy()
    samples = {k: [] for k in sessions}
    # Sessions take turns in blocks: a session's thread pool keeps spinning for a while after its
    # run, and would slow whichever session ran next if they alternated run by run. The first
    # runs of each block (warm-up after the switch) are not timed, and every other round runs the
    # sessions in reverse order, so that no session always follows the same one.
    rounds = max(1, -(-runs // _TIMED_PER_BLOCK))
    for round_ in range(rounds):
        for key, sess in (sessions.items() if round_ % 2 == 0 else reversed(sessions.items())):
            inputs = {sess.get_inputs()[0].name: feed}
            for i in range(_WARMUP_PER_BLOCK + _TIMED_PER_BLOCK):
                t0 = time.perf_counter()
                sess.run(None, inputs)
                if i >= _WARMUP_PER_BLOCK:
                    samples[key].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    row = {
        "input_shape": list(shape), "dense_layers": list(keep_dense), "sparsity": sparsity,
        "bytes": sizes,
        "size_vs_dense": {k: sizes[k] / sizes["dense"] for k in ("portable", "sparse")},
        "median_ms": ms, "runs": len(samples["dense"]),
        "speedup_vs_dense": {k: ms["dense"] / ms[k] for k in ms if k != "dense"},
        "max_rel_diff_vs_pytorch": checks,
    }
    size = row["size_vs_dense"]
    echo(f"  size vs dense: portable {size['portable']:.1%}, sparse {size['sparse']:.1%}")
    echo("  median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    echo("  vs dense: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup_vs_dense"].items()))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=1, help="inputs per run (default 1)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="onnxruntime intra-op threads and torch threads (default: torch's)")
    p.add_argument("--runs", type=int, default=16,
                   help="timed runs per session (in blocks of 8, sessions taking turns)")
    p.add_argument("--out", default=None, help="result file (default benchmarks/results/onnx-DATE.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {
        "date": now.isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())},
        "threads": args.threads,
        "versions": _versions(), "models": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            print(f"{name} at {args.sparsity:.0%}, batch {args.batch}, {args.threads} threads")
            report["models"][name] = bench_model(name, args.sparsity, args.batch, args.threads, args.runs, workdir,
                                                 print)
    report["machine"]["load_average_after"] = list(os.getloadavg())
    out = args.out or os.path.join(RESULTS, f"onnx-{now.date().isoformat()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

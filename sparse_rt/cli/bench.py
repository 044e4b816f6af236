"""`sparse-rt bench MODEL`: the command-line face of sparse_rt.bench.run."""

import sys

from ..bench import run as run_bench
from ..bench.engines import BASELINES
from . import args as cli_args


def add_parser(sub):
    p = sub.add_parser("bench", help="latency and throughput of a sparse model against dense, "
                       "torch.sparse, onnxruntime and OpenVINO baselines, interleaved in one run")
    p.add_argument("model", metavar="MODEL", help="a .srt file, a checkpoint (with --arch) or a zoo model "
                   "name (with --sparsity: magnitude-pruned, seeded)")
    p.add_argument("--arch", help="architecture of a checkpoint: zoo name or pkg.module:factory")
    p.add_argument("--sparsity", help="zoo models: sparsity to prune to; several give a sweep, e.g. 0.5,0.9")
    p.add_argument("--batch", default="1", help="batch sizes, e.g. 1,8,32 (default 1)")
    cli_args.add_input_shape(p)
    cli_args.add_trust_arch(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: the model's own")
    p.add_argument("--threads", type=cli_args.positive_int,
                   help="intra-op threads for torch, onnxruntime and OpenVINO (default: torch's)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"comma list of {', '.join(BASELINES)} (default: all; one that cannot run here is "
                   "reported with the reason)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per engine and batch size")
    p.add_argument("--time", type=float, default=10.0,
                   help="seconds of interleaved timing per batch size (all engines together)")
    p.add_argument("--min-iterations", type=int, default=1, help="at least this many timed calls per engine")
    p.add_argument("--seed", type=int, default=0, help="seed of pruning and inputs")
    p.add_argument("--cuda-graphs", action="store_true", help="replay torch engines from CUDA graphs")
    p.add_argument("--fuse", action="store_true", help="time sparse_rt's model fused (SparseModel.fuse: "
                   "BatchNorm folded, residual sums and ReLUs in the kernels); baselines stay unfused")
    p.add_argument("--capture", action="store_true", help="time sparse_rt's model replaying its forward from C++ "
                   "(SparseModel.capture: no Python between the ops; after --fuse if given)")
    p.add_argument("--store-weights", choices=["bf16", "fp16"],
                   help="time sparse_rt's model with its sparse layers' values kept in 16 bits (SparseModel."
                   "store_weights: activations stay fp32, outputs within the weights' rounding; after --fuse)")
    p.add_argument("--json", metavar="PATH", help="write the full report (machine, versions, all fields)")
    p.add_argument("--csv", nargs="?", const="-", metavar="PATH",
                   help="write the result rows as CSV (to stdout without PATH)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: latency vs batch, speedup vs sparsity")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args):
    from rich.console import Console  # an optional dependency (the bench extra)

    report = run_bench(args.model, args.input_shape, batch=args.batch, sparsity=args.sparsity, arch=args.arch,
                       tokens=args.tokens, trust_arch=args.trust_arch,
                 baselines=args.baselines, device=args.device, dtype=args.dtype, threads=args.threads,
                 warmup=args.warmup, time=args.time, min_iterations=args.min_iterations,
                 cuda_graphs=args.cuda_graphs, seed=args.seed, fuse=args.fuse, capture=args.capture,
                 store_weights=args.store_weights, progress=not args.no_progress)
    to_stdout = args.csv == "-"
    # With CSV on stdout the table goes to stderr, so the CSV can be piped.
    console = Console(stderr=to_stdout)
    if not console.is_terminal:
        console.width = 160  # a log file has room; rich would squeeze the tables to 80 columns
    console.print(report)
    if args.csv:
        text = report.to_csv(None if to_stdout else args.csv)
        if to_stdout:
            sys.stdout.write(text)
    if args.json:
        report.to_json(args.json)
    if args.plot:
        report.plot(args.plot)
    for path in (p for p in (args.json, args.plot, None if to_stdout else args.csv) if p):
        print(f"wrote {path}", file=sys.stderr)
    return 0

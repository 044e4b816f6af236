"""Fused ensemble vs its members run one after another vs one dense model, in one run.

An M-member WRN-28-10 ensemble (FreeTickets layout) at global density 0.2 with ERK per-layer
densities (random masks, as DST training starts from; the latency depends on the densities, not on
which weights survive), converted with sparse_rt.sparsify's defaults (layers below
min_sparsity 0.5 stay dense). Interleaved medians (sparse_rt.timing.compare_latency).

    python benchmarks/bench_ensemble.py                      # CPU; writes benchmarks/results/ensemble-cpu-DATE.json
    python benchmarks/bench_ensemble.py --device cuda        # GPU, CUDA-event timing
    python benchmarks/bench_ensemble.py --depth 10 --widen 2 --min-time 1   # a quick smoke run
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

import sparse_rt
from sparse_rt import models
from sparse_rt.ensemble import SparseEnsemble, erk_densities, erk_masks
from sparse_rt.machine import machine_info
from sparse_rt.timing import compare_latency, median


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--depth", type=int, default=28)
    p.add_argument("--widen", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--device", default="cpu")
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of interleaved rounds per batch size")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--output", help="result file (default benchmarks/results/ensemble-DEVICE-DATE.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    arch = dict(depth=args.depth, widen_factor=args.widen)
    log(f"building the dense wrn-{args.depth}-{args.widen}")
    dense = models.create("wrn", **arch).eval()
    densities = erk_densities(dense, args.density)
    members = []
    for i in range(args.members):
        log(f"member {i + 1}/{args.members}: ERK masks at density {args.density}, sparsify")
        torch.manual_seed(i)
        net = models.create("wrn", **arch).eval()
        masks = erk_masks(net, args.density, generator=torch.Generator().manual_seed(i))
        members.append(sparse_rt.sparsify(net, masks))
    log("fusing")
    ensemble = SparseEnsemble(members).eval().to(device)
    dense = dense.to(device)
    summary = members[0].summary()

    results = []
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, 32, 32, device=device)
            fused_out = ensemble.forward_members(x)
            sequential_out = torch.stack([m(x) for m in ensemble.members])
            rel_err = ((fused_out - sequential_out).abs().max() / sequential_out.abs().max()).item()
            log(f"batch {batch}: fused vs sequential max relative error {rel_err:.2e}; timing")
            fns = {"fused": lambda: ensemble.forward_members(x),
                   "sequential": lambda: [m(x) for m in ensemble.members],
                   "dense": lambda: dense(x)}
            samples = compare_latency(fns, warmup=0.0, min_time=args.min_time, min_rounds=args.min_rounds, cuda=cuda)
            ms = {k: median(v) * 1e3 for k, v in samples.items()}
            row = {"batch": batch, "median_ms": ms, "rounds": len(samples["fused"]),
                   "fused_speedup_vs_sequential": ms["sequential"] / ms["fused"],
                   "fused_speedup_vs_dense": ms["dense"] / ms["fused"], "fused_vs_sequential_rel_err": rel_err}
            results.append(row)
            log(f"batch {batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
                + f"; fused {row['fused_speedup_vs_sequential']:.2f}x vs sequential, "
                  f"{row['fused_speedup_vs_dense']:.2f}x vs dense")

    report = {
        **machine_info(),
        "benchmark": "ensemble",
        "command": "python benchmarks/bench_ensemble.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {"arch": f"wrn-{args.depth}-{args.widen}", "members": args.members, "density": args.density,
                   "device": str(device), "masks": "ERK per-layer densities, random positions",
                   "min_time_s": args.min_time, "min_rounds": args.min_rounds},
        "layers": [{"name": r.name, "shape": list(r.shape), "erk_density": densities[r.name], "format": r.format}
                   for r in summary],
        "fused_formats": {fmt: sum(1 for m in ensemble.fused.modules() if type(m).__name__ == cls)
                          for fmt, cls in (("sparse_conv", "SparseConv2d"), ("dense_conv", "Conv2d"),
                                           ("sparse_linear", "SparseLinear"), ("dense_linear", "Linear"))},
        "results": results,
    }
    out = Path(args.output) if args.output else (Path(__file__).parent / "results" /
                                                  f"ensemble-{device.type}-{datetime.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""GPU benchmark of the sparse_rt CUDA kernels against cuBLAS (torch.matmul / F.conv2d) and
torch.sparse CSR, all in one process so the reported ratios come from the same run.

Timing: CUDA events around `--reps` back-to-back calls after `--warmup` calls, repeated
`--samples` times; the median per-call time is reported. Batches <= 8 are replayed from a CUDA graph
when --graphs is given, which removes the launch overhead from both sides.

Suites
  linear  csr_linear fp16 vs dense matmul vs torch.sparse.mm on the DLMC transformer 0.9 patterns and
          on 4096x4096 / 11008x4096 layers at 70% and 90% random sparsity, batch 1, 8, 16, 32, 64.
  bsr     bsr_linear 32x32 fp16 at 90% block sparsity (4096x4096) vs dense, batch 1..64 and 4096.
  conv    csr_conv2d vs F.conv2d on the DLMC rn50 0.9 patterns with their real shapes (geometry
          inferred as sparse_rt.bench.dlmc documents).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import sparse_rt  # also registers torch.ops.sparse_rt
from sparse_rt.bench.dlmc import dlmc_root, rn50_conv_geometry, rn50_output_pixels
from sparse_rt.timing import cuda_graph_replay

REPO = Path(__file__).resolve().parent.parent


def load_smtx(path: Path):
    csr = sparse_rt.formats.load_smtx(path)
    return csr.shape[0], csr.shape[1], csr.crow_indices, csr.col_indices


class SparseWeight:
    """CSR weight with values drawn from a fixed seed, on the GPU in the benchmark dtype."""

    def __init__(self, rows, cols, crow, col, dtype, seed=0):
        gen = torch.Generator().manual_seed(seed)
        val = torch.randn(col.numel(), generator=gen).to(dtype)
        self.rows, self.cols = rows, cols
        self.crow, self.col, self.val = crow.cuda(), col.cuda(), val.cuda()
        self.dense = torch.sparse_csr_tensor(crow.long(), col.long(), val, (rows, cols)).to_dense().cuda()
        self.torch_csr = self.dense.to_sparse_csr()

    @classmethod
    def random(cls, rows, cols, sparsity, dtype, seed=0):
        gen = torch.Generator().manual_seed(seed)
        mask = torch.rand(rows, cols, generator=gen) >= sparsity
        csr = mask.float().to_sparse_csr()
        return cls(rows, cols, csr.crow_indices().int(), csr.col_indices().int(), dtype, seed)


def time_ms(fn, args) -> float:
    """Median milliseconds per call of fn()."""
    call = cuda_graph_replay(fn, warmup_calls=1) if args.graphs and getattr(fn, "small_batch", False) else fn
    for _ in range(args.warmup):
        call()
    samples = []
    for _ in range(args.samples):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.reps):
            call()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / args.reps)
    return statistics.median(samples)


def tagged(fn, small_batch):
    fn.small_batch = small_batch
    return fn


def bench_linear_case(name, w: SparseWeight, batch, args, with_torch_sparse=True):
    x = torch.randn(batch, w.cols, device="cuda", dtype=w.val.dtype)
    small = batch <= 8
    ours = tagged(lambda: torch.ops.sparse_rt.csr_linear(x, w.crow, w.col, w.val, None, w.cols, False), small)
    dense = tagged(lambda: torch.matmul(x, w.dense.T), small)
    row = {"suite": "linear", "case": name, "shape": [w.rows, w.cols], "batch": batch,
           "density": w.col.numel() / (w.rows * w.cols),
           "sparse_rt_ms": time_ms(ours, args), "dense_ms": time_ms(dense, args)}
    if with_torch_sparse:
        # torch.sparse computes W @ x^T; transposing the result back is part of the op's cost.
        ts = tagged(lambda: torch.sparse.mm(w.torch_csr, x.T).T, small)
        try:
            row["torch_sparse_ms"] = time_ms(ts, args)
        except RuntimeError as e:  # e.g. no fp16 CSR support in this torch/cuSPARSE build
            row["torch_sparse_error"] = str(e).splitlines()[0]
    return row


def suite_linear(args, rows):
    files = sorted((dlmc_root(REPO) / "transformer" / "magnitude_pruning" / "0.9").glob("*.smtx.gz"))
    if not files:
        print(f"warning: no DLMC transformer patterns under {dlmc_root(REPO)}", file=sys.stderr)
    cases = [(f.name.removesuffix(".smtx.gz"), lambda f=f: SparseWeight(*load_smtx(f), torch.float16))
             for f in files[: args.max_dlmc]]
    for m, k in ((4096, 4096), (11008, 4096)):
        for sparsity in (0.7, 0.9):
            cases.append((f"random_{m}x{k}_{sparsity}",
                          lambda m=m, k=k, s=sparsity: SparseWeight.random(m, k, s, torch.float16)))
    for name, make in cases:
        w = make()
        for batch in args.batches:
            rows.append(bench_linear_case(name, w, batch, args))
            report(rows[-1])


def suite_bsr(args, rows):
    m = k = 4096
    b = 32
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(m // b, k // b, generator=gen) >= 0.9
    w = torch.randn(m, k, generator=gen) * mask.repeat_interleave(b, 0).repeat_interleave(b, 1)
    w = w.half()
    bsr = w.to_sparse_bsr((b, b))
    crow, col = bsr.crow_indices().int().cuda(), bsr.col_indices().int().cuda()
    val, dense = bsr.values().contiguous().cuda(), w.cuda()
    for batch in [*args.batches, 4096]:
        x = torch.randn(batch, k, device="cuda", dtype=torch.float16)
        small = batch <= 8
        ours = tagged(lambda: torch.ops.sparse_rt.bsr_linear(x, crow, col, val, None, k, False), small)
        ref = tagged(lambda: torch.matmul(x, dense.T), small)
        rows.append({"suite": "bsr", "case": f"bsr32_{m}x{k}_0.9", "shape": [m, k], "batch": batch,
                     "density": float(mask.float().mean()),
                     "sparse_rt_ms": time_ms(ours, args), "dense_ms": time_ms(ref, args)})
        report(rows[-1])


def suite_conv(args, rows):
    base = dlmc_root(REPO)
    sizes_file = base / "rn50_batchsizes.txt"
    files = sorted((base / "rn50" / "magnitude_pruning" / "0.9").glob("*.smtx.gz"))
    if not files or not sizes_file.exists():
        print(f"warning: no DLMC rn50 patterns/batch sizes under {base}", file=sys.stderr)
        return
    pixels = rn50_output_pixels(base)
    for f in files:
        name = f.name.removesuffix(".smtx.gz")
        cout, cols, crow, col = load_smtx(f)
        geo = rn50_conv_geometry(name, cols, pixels[name])
        cin, k, stride, side = geo.in_channels, geo.kernel, geo.stride, geo.in_side
        w = SparseWeight(cout, cols, crow, col, torch.float16)
        dense = w.dense.view(cout, cin, k, k)
        for batch in args.conv_batches:
            x = torch.randn(batch, cin, side, side, device="cuda", dtype=torch.float16)
            ours = tagged(lambda: torch.ops.sparse_rt.csr_conv2d(
                x, w.crow, w.col, w.val, None, cin, [k, k], [stride, stride], [k // 2, k // 2],
                [1, 1], 1, False), batch <= 8)
            ref = tagged(lambda: F.conv2d(x, dense, None, stride, k // 2), batch <= 8)
            rows.append({"suite": "conv", "case": name, "shape": [cout, cin, k, k], "batch": batch,
                         "input_hw": side, "stride": stride, "density": w.col.numel() / (cout * cols),
                         "sparse_rt_ms": time_ms(ours, args), "dense_ms": time_ms(ref, args)})
            report(rows[-1])


def report(row):
    extra = ""
    if "torch_sparse_ms" in row:
        extra = f"  torch.sparse {row['torch_sparse_ms']:.4f} ms (x{row['torch_sparse_ms'] / row['sparse_rt_ms']:.2f})"
    print(f"{row['suite']:6} {row['case'][:60]:60} N={row['batch']:<5} sparse_rt {row['sparse_rt_ms']:.4f} ms"
          f"  dense {row['dense_ms']:.4f} ms (x{row['dense_ms'] / row['sparse_rt_ms']:.2f}){extra}")


def geomean(values):
    values = [v for v in values if v > 0]
    return sparse_rt.bench.geomean(values) if values else None


def summarize(rows):
    summary = {}
    for suite in sorted({r["suite"] for r in rows}):
        sel = [r for r in rows if r["suite"] == suite]
        entry = {"cases": len(sel),
                 "geomean_speedup_vs_dense": geomean([r["dense_ms"] / r["sparse_rt_ms"] for r in sel])}
        ts = [r["torch_sparse_ms"] / r["sparse_rt_ms"] for r in sel if "torch_sparse_ms" in r]
        if ts:
            entry["geomean_speedup_vs_torch_sparse"] = geomean(ts)
        for batch in sorted({r["batch"] for r in sel}):
            entry[f"geomean_speedup_vs_dense_N{batch}"] = geomean(
                [r["dense_ms"] / r["sparse_rt_ms"] for r in sel if r["batch"] == batch])
        summary[suite] = entry
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="JSON output (default benchmarks/results/cuda-<device>-<date>.json)")
    p.add_argument("--suites", default="linear,bsr,conv", help="comma-separated: linear,bsr,conv")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument("--conv-batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-dlmc", type=int, default=96, help="DLMC transformer files to use")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--reps", type=int, default=50, help="calls per timed sample")
    p.add_argument("--samples", type=int, default=15, help="timed samples (the median is reported)")
    p.add_argument("--graphs", action="store_true", help="replay batches <= 8 from CUDA graphs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda: CUDA is not available (torch %s, CUDA build: %s); run this on a GPU machine."
              % (torch.__version__, torch.version.cuda), file=sys.stderr)
        return 2
    if not torch._C._dispatch_has_kernel_for_dispatch_key("sparse_rt::csr_linear", "CUDA"):
        print("bench_cuda: sparse_rt was built without CUDA kernels.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    date = dt.date.today().isoformat()
    out = Path(args.out or REPO / "benchmarks" / "results"
               / f"cuda-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}-{date}.json")
    rows = []
    suites = {"linear": suite_linear, "bsr": suite_bsr, "conv": suite_conv}
    with torch.inference_mode():
        for name in args.suites.split(","):
            suites[name.strip()](args, rows)
    result = {
        "device": device, "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "date": date,
        "timing": {"method": "cuda events, median per call", "warmup": args.warmup, "reps": args.reps,
                   "samples": args.samples, "cuda_graphs_for_batch_le_8": args.graphs},
        "summary": summarize(rows), "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

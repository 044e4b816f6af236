#!/usr/bin/env python3
"""GPU benchmark of sparse_rt against torch's own kernels, all in one process so that every ratio
comes from the same run: dense (cuBLAS matmul, cuDNN convolution), torch.sparse CSR (cuSPARSE) and
torch's Triton BSR kernel (torch.sparse._triton_ops.bsr_dense_mm). `make gpu-check` runs it
(tools/gpu_check.py); --device cpu --tiny is its dry run on the CPU ops.

Suites (in this order by default, so that a time budget cuts the least important last)
  linear  csr_linear on random masks: BERT-base layer shapes (768x768, 3072x768, 768x3072; out x in)
          and an LLM MLP (11008x4096) at 70/90/95% sparsity, fp16, plus bf16 at 90%.
  conv    csr_conv2d vs F.conv2d on the 23 distinct ResNet-50 convolution geometries, real DLMC 90%
          patterns (benchmarks/data), batch 1 and 8.
  e2e     the zoo BERT-base encoder (sequence 128) and ResNet-50 (224x224) magnitude-pruned to 90%,
          as sparsify() plans them for the device and with every layer forced to CSR, vs the
          dense model, eager and replayed from CUDA graphs.
  dlmc    csr_linear on real DLMC Transformer 90% patterns (benchmarks/data).
  bsr     bsr_linear with 32x32 and 16x16 blocks (tensor cores) at 70/90/95% and 4x4 blocks (CUDA
          cores) at 90%, vs dense and Triton BSR (which needs blocks >= 16 and N % 16 == 0).
Batches N = 1, 8, 64, 256 for the Linear suites. Where csr_linear has two CUDA kernels (fp16/bf16,
N >= 8) each is also timed forced ("csr:subwarp", "csr:tensor_cores"; their speedup entries are
their time over the one the cost model chose).

Checks: every engine's output is compared with a float32 reference (TF32 off) before it is timed;
one whose largest error relative to max(|reference|, 1) exceeds the dtype's tolerance is recorded
as wrong and not timed, and a CUDA error that leaves the context unusable ends the run.
Timing on CUDA: a CUDA graph (eager where capture fails, noted) of `--reps` back-to-back calls,
replayed `--samples` times between events after `--warmup` replays; the median per call. Weights
rotate through copies totalling over twice the L2 cache, so that each call reads its weight from
memory as in a model whose layers do not fit the cache (at most 64 copies: rows say whether their
weights were cold). On the CPU: perf_counter, one copy.
Each row also records the layer's planner regime and what the CUDA cost model predicts
(sparse_rt.plan), and the summary fits the efficiencies that calibrate it.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's sparse_rt, built in place

import sparse_rt  # noqa: E402  (registers torch.ops.sparse_rt)
from sparse_rt import models  # noqa: E402
from sparse_rt.bench import geomean, percentile  # noqa: E402
from sparse_rt.bench.dlmc import load_packed, rn50_conv_geometry  # noqa: E402
from sparse_rt.formats import BSR, CSR  # noqa: E402
from sparse_rt.inputs import example_input  # noqa: E402
from sparse_rt.ops import CSR_CUDA_KERNELS, csr_cuda_kernel  # noqa: E402
from sparse_rt.plan import (  # noqa: E402
    CUDA_FIT_PERCENTILE,
    SPARSE_EFFICIENCY,
    cost_table,
    predicted_speedup,
    regime,
)
from sparse_rt.timing import cuda_graph_replay  # noqa: E402

DATA = REPO / "benchmarks" / "data"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest |out - ref| / max(|ref|, 1) accepted from any engine: loose enough for cuBLAS's reduced-
# precision split-K reductions and cuSPARSE, tight enough to catch a wrong kernel.
TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SUBJECT = "sparse_rt"
BASELINE_LABELS = {"dense": "dense (cuBLAS / cuDNN)", "torch_sparse": "torch.sparse CSR (cuSPARSE)",
                   "triton_bsr": "torch Triton BSR"}
BERT = {(768, 768), (3072, 768), (768, 3072)}
LLM = (11008, 4096)


class Unavailable(Exception):
    """An engine that cannot run here; the message says why."""


class ContextLost(RuntimeError):
    """A CUDA error after which the context cannot be used: the run ends."""


def rel_err(out, ref):
    if ref.numel() == 0:
        return 0.0
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_line(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


def fatal(e):
    """A sticky CUDA error: every later call fails too."""
    text = str(e)
    return any(s in text for s in ("illegal memory access", "unspecified launch failure", "misaligned address",
                                   "illegal instruction", "device-side assert", "CUDA error: an illegal"))


class Timer:
    def __init__(self, device, graphs, warmup, reps, samples):
        self.device, self.graphs = device, graphs and device.type == "cuda"
        self.warmup, self.reps, self.samples = warmup, reps, samples

    def ms(self, call, copies, reps=None, graphs=None):
        """(median ms per call of call(i), cycling i over the weight copies; how it was timed).
        `graphs` overrides the run's choice of CUDA graphs for this call."""
        reps = max(reps or self.reps, copies)
        seq = lambda: [call(i % copies) for i in range(reps)]
        how = "perf_counter"
        if self.device.type == "cuda":
            how = "eager"
            if self.graphs if graphs is None else graphs:
                try:
                    seq, how = cuda_graph_replay(seq, warmup_calls=1), "cuda graph"
                except RuntimeError as e:
                    if fatal(e):
                        raise
                    how = f"eager (graph capture failed: {first_line(e)[:120]})"
        for _ in range(self.warmup):
            seq()
        synchronize(self.device)
        samples = []
        for _ in range(self.samples):
            if self.device.type == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                seq()
                stop.record()
                stop.synchronize()
                samples.append(start.elapsed_time(stop) / reps)
            else:
                t0 = time.perf_counter()
                seq()
                samples.append((time.perf_counter() - t0) * 1e3 / reps)
        return statistics.median(samples), how


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.timer = Timer(self.device, not args.no_graphs, args.warmup, args.reps, args.samples)
        self.deadline = time.monotonic() + args.budget_s if args.budget_s else math.inf
        self.rows, self.notes = [], []
        self.sink = open(args.jsonl, "a") if args.jsonl else None
        props = torch.cuda.get_device_properties(self.device) if self.device.type == "cuda" else None
        self.rotate_bytes = 2 * getattr(props, "L2_cache_size", 0)

    def copies(self, weight_bytes):
        """Weight copies to rotate through so that each call reads its weight from memory (at most
        64: a layer under 1/64 of twice the L2 stays partly cached, as in a model that small)."""
        return 1 if not self.rotate_bytes else max(1, min(64, math.ceil(self.rotate_bytes / weight_bytes)))

    def emit(self, row):
        self.rows.append(row)
        self._sink(row)
        print(format_row(row), flush=True)

    def note(self, text):
        self.notes.append(text)
        self._sink({"note": text})
        print(text, flush=True)

    def _sink(self, record):
        """The --jsonl file gets every row and note at once: a run cut short keeps them."""
        if self.sink:
            self.sink.write(json.dumps(record) + "\n")
            self.sink.flush()

    def out_of_time(self, what):
        """True once the budget is spent; what would have run is noted."""
        if time.monotonic() <= self.deadline:
            return False
        self.note(f"skipped (time budget): {what}")
        return True

    def run_case(self, info, engines, reference, copies, tolerance, reps=None, graphs=None, weight_bytes=None):
        """Checks then times each engine ({name: call(i) or the reason it is skipped})."""
        row = {**info, "copies": copies, "engines": {}}
        if weight_bytes:
            row["weights_cold"] = bool(self.rotate_bytes) and copies * weight_bytes >= self.rotate_bytes
        for name, call in engines.items():
            if isinstance(call, str):
                row["engines"][name] = {"skipped": call}
                continue
            try:
                out = call(0)
                synchronize(self.device)
                err = rel_err(out, reference)
                del out
                if not err <= tolerance:  # NaN fails too
                    row["engines"][name] = {"wrong": err, "tolerance": tolerance}
                    continue
                ms, how = self.timer.ms(call, copies, reps, graphs)
                row["engines"][name] = {"ms": ms, "err": err, "timing": how}
            except Exception as e:
                if fatal(e):
                    row["engines"][name] = {"error": first_line(e)}
                    self.emit(finish_row(row))
                    raise ContextLost(first_line(e)) from e
                row["engines"][name] = {"error": first_line(e)}
        self.emit(finish_row(row))

    def planner(self, layer_regime, density):
        """What sparse_rt.plan predicts for a CSR layer on this device."""
        predicted = predicted_speedup(layer_regime, density, self.device)
        return {"device": cost_table(self.device), "regime": layer_regime, "predicted": predicted,
                "picks_sparse": predicted >= 1.0}


def finish_row(row):
    ours = row["engines"].get(SUBJECT, {}).get("ms")
    row["speedup"] = {name: e["ms"] / ours for name, e in row["engines"].items()
                      if name != SUBJECT and ours and "ms" in e}
    return row


# --------------------------------------------------------------------------------- weights

def random_weight(rows, cols, sparsity, dtype, device, seed, block=(1, 1)):
    """A dense weight with a random mask (whole blocks when `block` is given), normal values."""
    g = torch.Generator(device=device).manual_seed(seed)
    bh, bw = block
    keep = torch.rand(rows // bh, cols // bw, generator=g, device=device) >= sparsity
    if block != (1, 1):
        keep = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return torch.randn(rows, cols, generator=g, device=device).to(dtype) * keep


def pattern_weight(crow, col, shape, dtype, device, seed):
    """A dense weight holding normal values where the CSR pattern has entries."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.repeat_interleave(torch.arange(shape[0]), crow.diff().long())
    w = torch.zeros(shape, dtype=dtype)
    w[rows, col.long()] = torch.randn(col.numel(), generator=g).to(dtype)
    return w.to(device)


def csr_copies(w, copies):
    csr = CSR.from_dense(w)
    first = (csr.crow_indices, csr.col_indices, csr.values)
    return [first] + [tuple(t.clone() for t in first) for _ in range(copies - 1)]


def torch_sparse(w, copies):
    """x -> call(i) of torch.sparse CSR (cuSPARSE on CUDA), or Unavailable."""
    try:
        csr = w.to_sparse_csr()
    except RuntimeError as e:
        raise Unavailable(first_line(e)) from e
    weights = [csr] + [csr.clone() for _ in range(copies - 1)]
    # torch.sparse computes W @ x^T; both transposes are views.
    return lambda x: lambda i: torch.sparse.mm(weights[i], x.T).T


def clones(t, copies):
    return [t] + [t.clone() for _ in range(copies - 1)]


def engine(build):
    """build() -> call, or the reason it is unavailable (recorded, not fatal)."""
    try:
        return build()
    except Unavailable as e:
        return str(e)


# ---------------------------------------------------------------------------------- linear

def linear_engines(bench, w, fmt, block, copies):
    """x -> {engine: call(i) or why it is unavailable}; each engine's weight copies made once."""
    k = w.shape[1]
    if fmt == "csr":
        ours = csr_copies(w, copies)
        op = torch.ops.sparse_rt.csr_linear
        baseline, others = "torch_sparse", engine(lambda: torch_sparse(w, copies))
    else:
        bsr = BSR.from_dense(w, w != 0, block)
        ours = [(bsr.crow_indices, bsr.col_indices, bsr.values)]
        ours += [tuple(t.clone() for t in ours[0]) for _ in range(copies - 1)]
        op = torch.ops.sparse_rt.bsr_linear
        baseline, others = "triton_bsr", engine(lambda: triton_bsr(bench, w, block, copies))
    dense = clones(w, copies)

    def engines(x):
        other = others if isinstance(others, str) else engine(lambda: others(x))
        ours_call = lambda i: op(x, *ours[i], None, k, False)  # noqa: E731
        calls = {SUBJECT: ours_call, "dense": lambda i: F.linear(x, dense[i]), baseline: other}
        if fmt == "csr" and x.is_cuda and x.element_size() == 2 and x.shape[0] >= 8 and k % 2 == 0:
            # Each of csr_linear's two kernels also forced, so that a run shows what the cost model
            # chose against and refits it.
            calls.update({f"csr:{kernel}": forced_kernel(kernel, ours_call) for kernel in CSR_CUDA_KERNELS})
        return calls
    return engines


def forced_kernel(kernel, call):
    """call(i) run with the CSR kernel forced (sparse_rt.ops.csr_cuda_kernel)."""
    def run(i):
        with csr_cuda_kernel(kernel):
            return call(i)
    return run


def triton_bsr(bench, w, block, copies):
    """x -> call(i) of torch's Triton BSR kernel, or Unavailable."""
    if bench.device.type != "cuda":
        raise Unavailable("Triton BSR runs on CUDA only")
    if min(block) < 16 or any(b & (b - 1) for b in block):
        raise Unavailable(f"Triton BSR needs blocks of at least 16, powers of 2 (got {block[0]}x{block[1]})")
    try:
        from torch.sparse._triton_ops import bsr_dense_mm
    except ImportError as e:
        raise Unavailable(f"torch.sparse._triton_ops.bsr_dense_mm: {first_line(e)}") from e
    bsr = w.to_sparse_bsr(block)
    weights = [bsr] + [bsr.clone() for _ in range(copies - 1)]

    def bind(x):
        if x.shape[0] % 16:
            raise Unavailable(f"Triton BSR needs N % 16 == 0 (N = {x.shape[0]})")
        # Its natural layout: W @ x^T with x^T a view, the [M, N] result transposed back (a view).
        return lambda i: bsr_dense_mm(weights[i], x.T).T
    return bind


def linear_groups(bench, tiny):
    """(info, make weight, format, block) per weight, in priority order."""
    dtype = bench.dtype
    shapes = [(48, 64), (96, 40)] if tiny else [(768, 768), (3072, 768), (768, 3072), LLM]
    sparsities = [0.9] if tiny else [0.7, 0.9, 0.95]
    plans = [(dtype, s) for s in sparsities]
    if dtype != torch.bfloat16:
        plans.append((torch.bfloat16, 0.9))
    for d, s in plans:
        for m, k in shapes:
            yield ({"suite": "linear", "case": f"{m}x{k} {s:.0%} random", "pattern": "random", "shape": [m, k],
                    "sparsity": s, "dtype": str(d).removeprefix("torch."), "format": "csr"},
                   lambda m=m, k=k, s=s, d=d: random_weight(m, k, s, d, bench.device, seed=m + k), "csr", None)


def bsr_groups(bench, tiny):
    dtype = bench.dtype if bench.dtype != torch.float32 else torch.float16  # tensor cores take 16-bit
    if tiny:
        configs = [((16, 16), 0.75, (64, 64)), ((4, 4), 0.75, (64, 64))]
    else:
        shapes = [(768, 768), (3072, 768), (768, 3072), LLM]
        configs = ([((32, 32), 0.9, s) for s in shapes] + [((16, 16), 0.9, s) for s in shapes]
                   + [((32, 32), sp, s) for sp in (0.7, 0.95) for s in shapes]
                   + [((4, 4), 0.9, s) for s in ((3072, 768), LLM)])
    for block, s, (m, k) in configs:
        yield ({"suite": "bsr", "case": f"bsr{block[0]}x{block[1]} {m}x{k} {s:.0%}", "pattern": "random blocks",
                "shape": [m, k], "sparsity": s, "dtype": str(dtype).removeprefix("torch."),
                "format": f"bsr{block[0]}x{block[1]}"},
               lambda m=m, k=k, s=s, b=block: random_weight(m, k, s, dtype, bench.device, seed=m + k, block=b),
               "bsr", block)


def dlmc_groups(bench, tiny):
    patterns = load_packed(DATA / "dlmc-transformer-0.9.npz")
    for name, crow, col, shape, _ in patterns[:2] if tiny else patterns:
        yield ({"suite": "dlmc", "case": f"{shape[0]}x{shape[1]} {name}", "pattern": f"dlmc:{name}",
                "shape": list(shape), "sparsity": 0.9, "dtype": str(bench.dtype).removeprefix("torch."),
                "format": "csr"},
               lambda crow=crow, col=col, shape=shape: pattern_weight(crow, col, shape, bench.dtype, bench.device, 0),
               "csr", None)


def run_linear_suite(bench, groups, batches):
    for info, make_weight, fmt, block in groups:
        w = None
        for batch in batches:
            if bench.out_of_time(f"{info['suite']} {info['case']} N={batch}"):
                continue
            if w is None:
                w = make_weight()
                copies = bench.copies(w.numel() * w.element_size())
                density = (w != 0).float().mean().item()
                engines = linear_engines(bench, w, fmt, block, copies)
            x = torch.randn(batch, w.shape[1], device=bench.device).to(w.dtype)
            reference = x.float() @ w.float().T
            row = {**info, "batch": batch, "density": density}
            if fmt == "csr":
                row["planner"] = bench.planner(regime("Linear", batch), density)
            bench.run_case(row, engines(x), reference, copies, TOLERANCE[w.dtype],
                           weight_bytes=w.numel() * w.element_size())


# ------------------------------------------------------------------------------------ conv

def conv_suite(bench, tiny, batches):
    patterns = load_packed(DATA / "dlmc-rn50-0.9.npz")
    cases = []
    for name, crow, col, shape, info in patterns:
        geo = rn50_conv_geometry(name, shape[1], info["out_pixels"])
        cases.append((shape[0] * shape[1] * geo.out_side ** 2, name, crow, col, shape, geo))
    if tiny:  # the three cheapest layers
        cases = sorted(cases, key=lambda c: c[0])[:3]
    for _, name, crow, col, shape, geo in cases:
        cout, cin, k, s, p = shape[0], geo.in_channels, geo.kernel, geo.stride, geo.padding
        w = None
        for batch in batches:
            label = f"{cout}x{cin}x{k}x{k} s{s} in {geo.in_side}"
            if bench.out_of_time(f"conv {label} N={batch}"):
                continue
            if w is None:
                w = pattern_weight(crow, col, shape, bench.dtype, bench.device, 0)
                copies = bench.copies(w.numel() * w.element_size())
                ours, dense = csr_copies(w, copies), clones(w.view(cout, cin, k, k), copies)
                density = col.numel() / (shape[0] * shape[1])
            x = torch.randn(batch, cin, geo.in_side, geo.in_side, device=bench.device).to(bench.dtype)
            reference = F.conv2d(x.float(), w.float().view(cout, cin, k, k), None, s, p)
            engines = {
                SUBJECT: lambda i, x=x: torch.ops.sparse_rt.csr_conv2d(x, *ours[i], None, cin, [k, k], [s, s], [p, p],
                                                                       [1, 1], 1, False),
                "dense": lambda i, x=x: F.conv2d(x, dense[i], None, s, p),
            }
            row = {"suite": "conv", "case": f"{label} {name}", "pattern": f"dlmc:{name}", "shape": [cout, cin, k, k],
                   "stride": s, "padding": p, "input_hw": geo.in_side, "sparsity": 0.9,
                   "dtype": str(bench.dtype).removeprefix("torch."), "format": "csr", "batch": batch,
                   "density": density,
                   "planner": bench.planner(regime("Conv2d", batch, (k, k), (s, s), (p, p), geo.out_side ** 2),
                                            density)}
            bench.run_case(row, engines, reference, copies, TOLERANCE[bench.dtype],
                           weight_bytes=w.numel() * w.element_size())


# ------------------------------------------------------------------------------------- e2e

def e2e_suite(bench, tiny, batches):
    configs = [("bert_encoder", {"layers": 1, "hidden": 64, "heads": 2, "intermediate": 128} if tiny else {},
                (16, 64) if tiny else None),
               ("resnet50", {}, (3, 32, 32) if tiny else None)]
    for name, kwargs, shape in (c for c in configs if c[0] in bench.args.models):
        label = f"{name} 90%"
        if bench.out_of_time(f"e2e {label}"):
            continue
        shape = shape or models.input_shape(name, **kwargs)
        torch.manual_seed(0)
        pruned = sparse_rt.magnitude_prune(models.create(name, **kwargs).eval(), 0.9,
                                           exclude=models.keep_dense(name)).to(bench.device)
        one = example_input(1, shape, device=bench.device)
        variants = {"dense": copy.deepcopy(pruned),
                    "auto": sparse_rt.sparsify(pruned, example_inputs=(one,)),
                    "csr": sparse_rt.sparsify(pruned, format="csr")}
        sparse_layers = {plan: sum(1 for r in variants[plan].summary() if r.format != "dense")
                         for plan in ("auto", "csr")}
        layers = len(variants["auto"].summary())
        variants = {key: m.to(bench.dtype).eval() for key, m in variants.items()}
        for batch in batches:
            if bench.out_of_time(f"e2e {label} N={batch}"):
                continue
            x32 = example_input(batch, shape, device=bench.device)
            x = x32.to(bench.dtype)
            with torch.inference_mode():
                reference = pruned(x32)
                dense_err = rel_err(variants["dense"](x), reference)
            # fp16 through a deep model: the dense model's own error, doubled, is the yardstick.
            tolerance = max(TOLERANCE[bench.dtype], 2 * dense_err)
            for mode in ("eager", "graph") if bench.device.type == "cuda" else ("eager",):
                for plan in ("auto", "csr"):
                    engines = {SUBJECT: lambda i, m=variants[plan]: m(x), "dense": lambda i: variants["dense"](x)}
                    row = {"suite": "e2e", "case": f"{label} {plan} plan, {mode}", "model": name, "plan": plan,
                           "mode": mode, "sparsity": 0.9, "dtype": str(bench.dtype).removeprefix("torch."),
                           "batch": batch, "input_shape": list(shape), "dense_err": dense_err,
                           "sparse_layers": sparse_layers[plan], "layers": layers}
                    bench.run_case(row, engines, reference, 1, tolerance, reps=bench.args.e2e_reps,
                                   graphs=mode == "graph")


# ---------------------------------------------------------------------------- run, report

def run(args):
    bench = Bench(args)
    tiny = args.tiny
    suites = {
        "linear": lambda: run_linear_suite(bench, linear_groups(bench, tiny), args.batches),
        "conv": lambda: conv_suite(bench, tiny, args.conv_batches),
        "e2e": lambda: e2e_suite(bench, tiny, args.conv_batches),
        "dlmc": lambda: run_linear_suite(bench, dlmc_groups(bench, tiny), args.batches),
        "bsr": lambda: run_linear_suite(bench, bsr_groups(bench, tiny), args.batches),
    }
    # References in true fp32; cuDNN picks its fastest algorithm for the dense convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    start = time.monotonic()
    try:
        with torch.inference_mode():
            for name in args.suites:
                suites[name]()
    except ContextLost as e:
        bench.note(f"run ended: CUDA context lost ({e})")
    finally:
        if bench.sink:
            bench.sink.close()
    return bench.rows, bench.notes, time.monotonic() - start


def summarize(rows, device):
    """Per suite: cases, sparse_rt's wrong or failed outputs (`problems`) and the baselines'
    (`baseline_failures`), geomean speedup per baseline (overall and per batch); the planner's
    calibration; on CUDA, the issue's targets."""
    summary = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        sel = [r for r in rows if r["suite"] == suite]
        entry = {"cases": len(sel), "problems": {}, "baseline_failures": {}}
        for r in sel:
            for name, e in r["engines"].items():
                kind = next((k for k in ("wrong", "error") if k in e), None)
                if kind:
                    where = entry["problems"] if name == SUBJECT else entry["baseline_failures"]
                    where.setdefault(f"{name} {kind}", []).append(f"{r['case']} N={r['batch']}: {e[kind]}")
        baselines = dict.fromkeys(b for r in sel for b in r["speedup"])
        for b in baselines:
            values = [r["speedup"][b] for r in sel if b in r["speedup"]]
            entry[f"geomean_vs_{b}"] = geomean(values)
            for batch in dict.fromkeys(r["batch"] for r in sel):
                at = [r["speedup"][b] for r in sel if r["batch"] == batch and b in r["speedup"]]
                if at:
                    entry[f"geomean_vs_{b}_N{batch}"] = geomean(at)
        summary[suite] = entry
    summary["calibration"] = calibration(rows)
    summary["targets"] = targets(rows) if torch.device(device).type == "cuda" else []
    return summary


def calibration(rows):
    """Per planner regime, the efficiency sparse_rt.plan's table holds (speedup over dense x density over
    the CSR rows timed: its CUDA_FIT_PERCENTILE-th percentile on CUDA, as benchmarks/calibrate_plan.py
    fits that row, else its geometric mean), with the geometric mean and the table's current value."""
    by_regime = {}
    for r in rows:
        if "planner" in r and "dense" in r["speedup"]:
            by_regime.setdefault((r["planner"]["device"], r["planner"]["regime"]), []).append(
                r["speedup"]["dense"] * r["density"])
    return {f"{dev}:{reg}": {"measured": percentile(v, CUDA_FIT_PERCENTILE) if dev == "cuda" else geomean(v),
                             "geomean": geomean(v), "cases": len(v), "table": SPARSE_EFFICIENCY[dev][reg]}
            for (dev, reg), v in sorted(by_regime.items())}


def _speedups(rows, baseline, keep):
    return [r["speedup"][baseline] for r in rows if keep(r) and baseline in r["speedup"]]


def targets(rows):
    """The issue's targets (fp16, CUDA graphs), each with what this run measured."""
    def random_csr(r, sparsity, shapes=None):
        return (r["suite"] == "linear" and r["dtype"] == "float16" and r["sparsity"] == sparsity
                and (shapes is None or tuple(r["shape"]) in shapes))

    def e2e(model, plan):
        return lambda r: (r["suite"] == "e2e" and r["model"] == model and r["plan"] == plan and r["mode"] == "graph"
                          and r["batch"] == 1)

    specs = [
        ("CSR >= 1.5x cuBLAS at 90%, N <= 64, BERT-base shapes", "dense", "min", 1.5,
         lambda r: random_csr(r, 0.9, BERT) and r["batch"] <= 64),
        ("CSR >= 2x cuBLAS at 90%, N <= 64, 11008x4096", "dense", "min", 2.0,
         lambda r: random_csr(r, 0.9, {LLM}) and r["batch"] <= 64),
        ("CSR >= 1.2x cuBLAS at 70%, N = 1", "dense", "min", 1.2, lambda r: random_csr(r, 0.7) and r["batch"] == 1),
        ("CSR >= 2x torch.sparse CSR (cuSPARSE) everywhere", "torch_sparse", "min", 2.0,
         lambda r: r["suite"] in ("linear", "dlmc")),
        ("BSR 32x32 at 90% >= 3x cuBLAS at N >= 256", "dense", "min", 3.0,
         lambda r: r["suite"] == "bsr" and r["format"] == "bsr32x32" and r["sparsity"] == 0.9 and r["batch"] >= 256),
        ("BSR 32x32 at 90% >= 1.5x Triton BSR at N >= 256", "triton_bsr", "min", 1.5,
         lambda r: r["suite"] == "bsr" and r["format"] == "bsr32x32" and r["sparsity"] == 0.9 and r["batch"] >= 256),
        ("conv >= 1.3x cuDNN, geomean over the ResNet-50 90% shapes at batch 1", "dense", "geomean", 1.3,
         lambda r: r["suite"] == "conv" and r["batch"] == 1),
        ("BERT-base 90% batch 1 >= 1.5x dense with CUDA graphs (planned)", "dense", "min", 1.5,
         e2e("bert_encoder", "auto")),
        ("BERT-base 90% batch 1 >= 1.5x dense with CUDA graphs (all CSR)", "dense", "min", 1.5,
         e2e("bert_encoder", "csr")),
    ]
    out = []
    for text, baseline, how, goal, keep in specs:
        values = _speedups(rows, baseline, keep)
        measured = (min(values) if how == "min" else geomean(values)) if values else None
        out.append({"target": text, "measured": measured, "cases": len(values),
                    "met": None if measured is None else measured >= goal})
    losses = [f"{r['case']} N={r['batch']}" for r in rows
              if r.get("planner", {}).get("picks_sparse") and r["speedup"].get("dense", math.inf) < 1.0]
    timed = sum(1 for r in rows if r.get("planner", {}).get("picks_sparse") and "dense" in r["speedup"])
    out.append({"target": "never below 1x dense where the planner picks sparse", "measured": len(losses),
                "cases": timed, "met": None if not timed else not losses, "losses": losses[:20]})
    return out


def format_row(row):
    ours = row["engines"].get(SUBJECT, {})
    ours_text = (f"{ours['ms']:9.4f} ms err {ours['err']:.1e}" if "ms" in ours else
                 f"{next(iter(ours)) if ours else 'missing':>9} {str(next(iter(ours.values()), ''))[:40]}")
    parts = []
    for name, e in row["engines"].items():
        if name == SUBJECT:
            continue
        if name in row["speedup"]:
            parts.append(f"{name} x{row['speedup'][name]:.2f}")
        else:
            parts.append(f"{name} {next(iter(e))}")
    return (f"{row['suite']:6} {row['dtype']:8} {row['case'][:56]:56} N={row['batch']:<4} "
            f"{ours_text}  {'  '.join(parts)}")


def table(rows, summary):
    """The rows, then per suite the geomean speedups, then the targets, as printable lines."""
    lines = [format_row(r) for r in rows]
    lines.append("")
    for suite, entry in summary.items():
        if suite in ("calibration", "targets"):
            continue
        means = "  ".join(f"vs {k.removeprefix('geomean_vs_')} x{v:.2f}" for k, v in entry.items()
                          if k.startswith("geomean_vs_") and "_N" not in k)
        problems = "; ".join(f"{k}: {len(v)}" for k, v in entry["problems"].items())
        failures = "; ".join(f"{k}: {len(v)}" for k, v in entry["baseline_failures"].items())
        lines.append(f"{suite:6} {entry['cases']} cases  {means}"
                     + (f"  SPARSE_RT FAILED {problems}" if problems else "")
                     + (f"  (baselines failed: {failures})" if failures else ""))
    for key, c in summary["calibration"].items():
        lines.append(f"calibration {key:16} measured efficiency {c['measured']:.3f} over {c['cases']} cases "
                     f"(plan.py: {c['table']})")
    for t in summary["targets"]:
        verdict = {None: "no data", True: "met", False: "MISSED"}[t["met"]]
        value = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        lines.append(f"target  {t['target']:72} {value:>6}  {verdict}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__[__doc__.index("Suites"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda text: [int(v) for v in text.split(",")]
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--tiny", action="store_true", help="small sizes (the dry run)")
    p.add_argument("--suites", type=lambda t: t.split(","), default=["linear", "conv", "e2e", "dlmc", "bsr"])
    p.add_argument("--dtype", choices=DTYPES, default="fp16")
    p.add_argument("--models", type=lambda t: t.split(","), default=["bert_encoder", "resnet50"],
                   help="the e2e suite's models")
    p.add_argument("--batches", type=ints, default=None, help="Linear batches (default 1,8,64,256; tiny 1,8)")
    p.add_argument("--conv-batches", type=ints, default=None, help="conv and e2e batches (default 1,8; tiny 1,2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed replays first")
    p.add_argument("--reps", type=int, default=20, help="calls per timed replay (at least the weight copies)")
    p.add_argument("--e2e-reps", type=int, default=5, help="forward passes per timed replay, e2e")
    p.add_argument("--samples", type=int, default=10, help="timed replays; the median is reported")
    p.add_argument("--no-graphs", action="store_true", help="time eager calls instead of CUDA graph replays")
    p.add_argument("--budget-s", type=float, help="start no case after this many seconds")
    p.add_argument("--jsonl", help="append each row here as soon as it is measured")
    p.add_argument("--out", help="write the rows, the summary and the machine here as JSON")
    args = p.parse_args(argv)
    unknown = set(args.suites) - {"linear", "conv", "e2e", "dlmc", "bsr"}
    if unknown:
        p.error(f"unknown suites {sorted(unknown)}")
    args.batches = args.batches or ([1, 8] if args.tiny else [1, 8, 64, 256])
    args.conv_batches = args.conv_batches or ([1, 2] if args.tiny else [1, 8])
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(f"bench_cuda: CUDA is not available (torch {torch.__version__}); use --device cpu", file=sys.stderr)
            return 2
        if not torch._C._dispatch_has_kernel_for_dispatch_key("sparse_rt::csr_linear", "CUDA"):
            print("bench_cuda: sparse_rt was built without CUDA kernels", file=sys.stderr)
            return 2
    rows, notes, seconds = run(args)
    summary = summarize(rows, args.device)
    print("\n".join(["", *table([], summary), *notes]))
    if args.out:
        result = {**sparse_rt.bench.machine_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                  "args": vars(args), "seconds": seconds, "notes": notes, "summary": summary, "results": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 1 if failed(summary, notes) else 0


def failed(summary, notes):
    """Whether sparse_rt computed a wrong result, raised, or the CUDA context was lost."""
    lost = any(n.startswith("run ended") for n in notes)
    return lost or any(entry["problems"] for suite, entry in summary.items() if suite not in ("calibration", "targets"))


if __name__ == "__main__":
    sys.exit(main())

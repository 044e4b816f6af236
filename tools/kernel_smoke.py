#!/usr/bin/env python3
"""Calls every kernel family of sparse_rt once, each output checked against a float64 dense
reference: the script `make gpu-check` runs under compute-sanitizer (memcheck and racecheck).

Families: csr_linear in fp32/fp16/bf16 (vector and scalar index loads: `col[1:]`-style views
take the scalar path; subwarps of 8, 16 and 32 lanes; batch tiles of 1, 2, 4 and 8; fp16/bf16 on
tensor cores from batch 8), bsr_linear
(16x16 and 32x32 blocks on tensor cores, fp32 and small or rectangular blocks on CUDA cores),
csr_conv2d (stride, padding, dilation, groups, 1x1), and the index validation kernel (full
checks on). Every family also meets empty rows and a weight with no nonzeros.

Inputs are made and references computed on the CPU, so on CUDA the sanitizer sees little besides
sparse_rt's kernels and copies; sizes are small (a sanitized kernel runs 10-100x slower). Before
each call a block of NaNs the output's size is allocated and freed, so that on CUDA the caching
allocator hands the op that memory: an element the kernel never writes shows as an error.

    python tools/kernel_smoke.py --device cuda [--json FILE]

Exit status 0 when every output matches, 1 when one does not, 2 when the ops are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import sparse_rt  # noqa: E402  (registers torch.ops.sparse_rt)
from sparse_rt.formats import BSR, CSR  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest |out - ref| relative to max(|ref|, 1) per dtype, as the test suite's tolerance.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@dataclass
class Case:
    family: str
    name: str
    dtype: torch.dtype
    error: float = float("nan")
    ok: bool = False
    message: str = ""

    def as_dict(self):
        return {"family": self.family, "name": self.name, "dtype": str(self.dtype).removeprefix("torch."),
                "error": self.error, "ok": self.ok, "message": self.message}


def weight(rows, cols, density, seed, dtype, empty_rows=(), dense_rows=()):
    """A float64 CPU weight with a random mask (rows listed in empty_rows / dense_rows forced),
    values representable in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    for r in empty_rows:
        mask[r] = False
    for r in dense_rows:
        mask[r] = True
    return (torch.randn(rows, cols, generator=g).to(dtype) * mask).double()


def randn(*shape, seed, dtype):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def poison(device, numel, dtype):
    """Leaves a freed NaN block of `numel` elements in the CUDA caching allocator (see the doc)."""
    if device.type == "cuda":
        torch.full((numel,), float("nan"), dtype=dtype, device=device)


def misaligned(t):
    """t as a view one element into a copy: same values, an address no vector load accepts."""
    padded = torch.cat([t[:1], t]) if t.numel() else torch.zeros(1, dtype=t.dtype, device=t.device)
    return padded[1:]


def check(case, run, reference, out_shape, device):
    """Runs `run()`, compares with `reference` (float64, CPU) and fills `case`."""
    try:
        poison(device, max(1, reference.numel()), case.dtype)
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out = out.cpu()
        if tuple(out.shape) != tuple(out_shape) or out.dtype != case.dtype:
            case.message = f"returned {tuple(out.shape)} {out.dtype}, expected {tuple(out_shape)} {case.dtype}"
            return case
        diff = (out.double() - reference).abs()
        scale = max(reference.abs().max().item(), 1.0) if reference.numel() else 1.0
        case.error = diff.max().item() / scale if diff.numel() else 0.0
        # NaN (an unwritten element) fails the comparison.
        case.ok = bool(case.error <= TOLERANCE[case.dtype])
        if not case.ok:
            case.message = f"relative error {case.error:.3g} > {TOLERANCE[case.dtype]:.1g}"
    except Exception as e:  # recorded, so that one failure does not hide the other cases
        case.message = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return case


def csr_linear_cases(device):
    # (name, rows, cols, density, batch, extra): avg row lengths pick subwarps 8 (short rows),
    # 16 (>= 64 per row) and 32 (>= 256); batches 1, 2, 3, 5 and 19 pick the tile widths 1, 2, 4,
    # 8 and two tiles with a tail. From batch 8, fp16/bf16 take the tensor cores: 4-byte x copies
    # (in_features not a multiple of 8) and 16-byte ones, steps of 128 and (dense rows) 32 columns
    # with windows that overflow, rows and batches past the last whole tile.
    shapes = [("short rows", 40, 96, 0.2, 1), ("subwarp 16", 24, 512, 0.2, 2),
              ("subwarp 32", 16, 1024, 0.4, 3), ("tile 8", 33, 200, 0.3, 5), ("tiles + tail", 48, 128, 0.25, 19),
              ("tensor cores", 70, 302, 0.1, 9), ("tensor cores dense", 80, 256, 0.9, 40),
              ("tensor cores wide batch", 130, 256, 0.05, 150)]
    for dtype in DTYPES.values():
        for i, (label, rows, cols, density, batch) in enumerate(shapes):
            w = weight(rows, cols, density, seed=i, dtype=dtype, empty_rows=(0, rows // 2), dense_rows=(rows - 1,))
            for view in ("aligned", "col[1:] view"):
                yield f"{label} {rows}x{cols} N={batch} {view}", dtype, w, batch, view != "aligned", i % 2 == 0
        yield "nnz=0 with bias", dtype, torch.zeros(12, 20, dtype=torch.float64), 3, False, False


def run_csr_linear(device):
    for name, dtype, w, batch, view, relu in csr_linear_cases(device):
        case = Case("csr_linear", name, dtype)
        csr = CSR.from_dense(w.to(dtype))
        x = randn(batch, w.shape[1], seed=7, dtype=dtype)
        bias = randn(w.shape[0], seed=8, dtype=dtype)
        ref = x.double() @ w.T + bias.double()
        ref = ref.relu() if relu else ref
        col, val = csr.col_indices.to(device), csr.values.to(device)
        if view:
            col, val = misaligned(col), misaligned(val)
        args = (x.to(device), csr.crow_indices.to(device), col, val, bias.to(device), w.shape[1], relu)
        # The tensor-core cases are too small for the cost model to pick that kernel: forced.
        with sparse_rt.ops.csr_cuda_kernel("tensor_cores" if name.startswith("tensor cores") else None):
            result = check(case, lambda: torch.ops.sparse_rt.csr_linear(*args), ref, ref.shape, device)
        yield result


def run_bsr_linear(device):
    # (blocks, dtypes, rows, cols, batch): 16x16 / 32x32 fp16 and bf16 take mma.sync; fp32, 4x4
    # and 2x8 take the CUDA-core kernel. Batches 1, 9 (two 8-wide tiles) and 70 (several warps' tiles).
    configs = [((16, 16), ("fp16", "bf16", "fp32"), 64, 96, 9), ((32, 32), ("fp16", "bf16", "fp32"), 128, 64, 70),
               ((4, 4), ("fp16", "fp32"), 32, 48, 1), ((2, 8), ("bf16",), 16, 32, 5)]
    for (bh, bw), dtypes, rows, cols, batch in configs:
        for dname in dtypes:
            dtype = DTYPES[dname]
            g = torch.Generator().manual_seed(bh * 100 + bw)
            block_mask = torch.rand(rows // bh, cols // bw, generator=g) < 0.5
            block_mask[0] = False  # an empty block row
            block_mask[-1] = True
            mask = block_mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
            for label, w in ((f"{bh}x{bw} {rows}x{cols} N={batch}", randn(rows, cols, seed=3, dtype=dtype) * mask),
                             (f"{bh}x{bw} nnz=0", torch.zeros(rows, cols, dtype=dtype))):
                case = Case("bsr_linear", label, dtype)
                bsr = BSR.from_dense(w, w != 0, (bh, bw))
                x = randn(batch, cols, seed=4, dtype=dtype)
                bias = randn(rows, seed=5, dtype=dtype)
                ref = (x.double() @ w.double().T + bias.double()).relu()
                args = (x.to(device), bsr.crow_indices.to(device), bsr.col_indices.to(device),
                        bsr.values.to(device), bias.to(device), cols, True)
                yield check(case, lambda: torch.ops.sparse_rt.bsr_linear(*args), ref, ref.shape, device)


def run_csr_conv2d(device):
    # (name, batch, cin, cout, hw, kernel, stride, padding, dilation, groups)
    configs = [("3x3 s1 p1", 2, 8, 12, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1),
               ("3x3 s2 p1 d2", 1, 6, 8, (11, 10), (3, 3), (2, 2), (1, 1), (2, 2), 1),
               ("1x1", 3, 16, 8, (7, 7), (1, 1), (1, 1), (0, 0), (1, 1), 1),
               ("5x3 groups 2 s(2,1) p(2,0)", 1, 8, 6, (8, 9), (5, 3), (2, 1), (2, 0), (1, 1), 2),
               ("7x7 s2 p3 stem", 1, 3, 8, (16, 16), (7, 7), (2, 2), (3, 3), (1, 1), 1)]
    for dtype in DTYPES.values():
        for i, (label, batch, cin, cout, hw, k, stride, pad, dil, groups) in enumerate(configs):
            cols = cin // groups * k[0] * k[1]
            for suffix, density in (("", 0.3), (" nnz=0", 0.0)):
                case = Case("csr_conv2d", label + suffix, dtype)
                w = weight(cout, cols, density, seed=20 + i, dtype=dtype, empty_rows=(1,) if density else ())
                csr = CSR.from_dense(w.to(dtype))
                x = randn(batch, cin, *hw, seed=21, dtype=dtype)
                bias = randn(cout, seed=22, dtype=dtype)
                ref = F.conv2d(x.double(), w.view(cout, cin // groups, *k), bias.double(), stride, pad, dil, groups)
                args = (x.to(device), csr.crow_indices.to(device), csr.col_indices.to(device), csr.values.to(device),
                        bias.to(device), cin, list(k), list(stride), list(pad), list(dil), groups, False)
                yield check(case, lambda: torch.ops.sparse_rt.csr_conv2d(*args), ref, ref.shape, device)


def run_full_checks(device):
    """The index validation kernel: one valid call with full checks on (it must pass) and one
    out-of-range column (it must be refused with the op's error, not read out of bounds)."""
    dtype = torch.float32
    w = weight(20, 64, 0.3, seed=30, dtype=dtype, empty_rows=(3,))
    csr = CSR.from_dense(w.float())
    x = randn(2, 64, seed=31, dtype=dtype)
    args = [x.to(device), csr.crow_indices.to(device), csr.col_indices.to(device), csr.values.to(device), None, 64]
    with sparse_rt.ops.full_index_checks():
        yield check(Case("validate_indices", "valid CSR, full checks", dtype),
                    lambda: torch.ops.sparse_rt.csr_linear(*args), x.double() @ w.T, (2, 20), device)
        bad = csr.col_indices.clone()
        bad[-1] = 64
        args[2] = bad.to(device)
        case = Case("validate_indices", "column 64 of 64 refused", dtype)
        try:
            torch.ops.sparse_rt.csr_linear(*args)
            if device.type == "cuda":
                torch.cuda.synchronize()
            case.message = "an out-of-range column was accepted"
        except RuntimeError as e:
            case.ok, case.error = "sparse_rt" in str(e), 0.0
            case.message = "" if case.ok else f"refused without naming the op: {str(e).splitlines()[0][:200]}"
        yield case


FAMILIES = {"csr_linear": run_csr_linear, "bsr_linear": run_bsr_linear, "csr_conv2d": run_csr_conv2d,
            "validate_indices": run_full_checks}


def missing_ops(device):
    """Why the compiled ops cannot run on `device`, or None."""
    if not sparse_rt.ops.HAS_COMPILED_OPS:
        return f"sparse_rt._C is not built ({sparse_rt.ops._library.LOAD_ERROR})"
    key = "CUDA" if device.type == "cuda" else "CPU"
    for op in ("csr_linear", "bsr_linear", "csr_conv2d"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_rt::{op}", key):
            return f"torch.ops.sparse_rt.{op} has no {key} kernel"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="also write the cases as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    why = missing_ops(device)
    if why:
        print(f"kernel_smoke: cannot run on {device}: {why}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cases = []
    with torch.inference_mode():
        for family in FAMILIES.values():
            for case in family(device):
                cases.append(case)
                status = "ok  " if case.ok else "FAIL"
                print(f"{status} {case.family:16} {str(case.dtype).removeprefix('torch.'):9} {case.name:44} "
                      f"err {case.error:.2e} {case.message}", flush=True)
    failed = [c for c in cases if not c.ok]
    summary = {"device": str(device), "cases": len(cases), "failed": len(failed),
               "seconds": round(time.perf_counter() - start, 2), "results": [c.as_dict() for c in cases]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    print(f"kernel smoke: {len(cases)} cases, {len(failed)} failed ({summary['seconds']} s on {device})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

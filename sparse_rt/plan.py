"""Per-layer format choice: which layers run sparse, in which format, and why."""

import re
from dataclasses import dataclass

import torch

from .ops import build_info

FORMAT_HELP = "'auto', 'csr', 'dense' or 'bsr:RxC' (e.g. 'bsr:4x4')"


@dataclass(frozen=True)
class FormatSpec:
    kind: str  # "auto" | "csr" | "bsr" | "dense"
    blocksize: tuple = None

    @classmethod
    def parse(cls, spec):
        if isinstance(spec, FormatSpec):
            return spec
        text = str(spec).strip().lower()
        if text in ("auto", "csr", "dense"):
            return cls(text)
        match = re.fullmatch(r"bsr(?::(\d+)x(\d+))?", text)
        if match:
            bh, bw = (int(match[1]), int(match[2])) if match[1] else (4, 4)
            if bh < 1 or bw < 1:
                raise ValueError(f"format {spec!r}: block sizes must be positive")
            return cls("bsr", (bh, bw))
        raise ValueError(f"format must be {FORMAT_HELP}, got {spec!r}")


@dataclass(frozen=True)
class LayerPlan:
    format: str  # "csr" | "bsr" | "dense"
    blocksize: tuple
    reason: str


def format_label(format, blocksize):
    """The format as summaries show it: 'csr', 'dense' or 'bsrRxC'."""
    return f"bsr{blocksize[0]}x{blocksize[1]}" if format == "bsr" else format


# Speed of the sparse kernels relative to dense torch per multiply-add, per row (cost_table picks it): a layer of
# density d is predicted to run efficiency / d times faster sparse. The regimes: "gemv" a Linear
# layer at batch < 8, "gemm" a batched Linear layer, "conv1x1" a 1x1 stride-1 unpadded convolution,
# "conv" any other convolution, and a 1x1 one with fewer than 8 output pixels.
#
# "cpu": fitted by benchmarks/calibrate_plan.py from `make bench` on the reference machine (2-core
# AMD EPYC with AVX-512), as the geometric mean of speedup x density over the DLMC layers of each
# regime (gemv: gather dot products; gemm: tiled SpMM; conv1x1: tiled SpMM straight on the input;
# conv: packed input, also the 1x1 one narrower than the SpMM's narrowest tile).
#
# "cpu-avx2": the same fit where the CPU kernels run at x86-64-v3 (AVX2, no AVX-512), from
# benchmarks/results/cpu-linear-2026-12-04-zen3.json and cpu-conv-2026-12-04-zen3.json (a 2-core AMD
# EPYC of family 25, Zen 3). Batched Linear layers win from lower sparsity there (gemm 0.362, not
# 0.247): dense sgemm is slower without AVX-512, and the SpMM's L1-sized column blocks pay off at
# moderate sparsity (BERT-base shapes, 128 tokens, in that run: sparse 1.7x dense at 70%).
#
# "cuda": NOT MEASURED. Estimates from the kernels' design, to be replaced by the efficiencies that
# `make gpu-check` fits the same way on a GPU (its results file: summary.calibration). At batch < 8
# both sides stream the weight: dense fp16 reads 2 bytes per weight, CSR 6 per nonzero (fp16 value,
# int32 column) plus gathers of x that mostly hit the cache; at a guessed 60% of the dense GEMV's
# bandwidth, 2/6 x 0.6 = 0.2. Batched layers and convolutions run dense on tensor cores (cuBLAS,
# cuDNN's implicit GEMM) but sparse on CUDA cores, re-reading each sparse row for every 8 batch rows:
# guessed 0.05, i.e. sparse only above 95% sparsity. Half precision is assumed, where the dense side
# is fastest; in fp32 the sparse kernels should win more often than this predicts, not less.
#
# Where these estimates are off for a machine, sparsify(..., autotune=True) measures instead.
SPARSE_EFFICIENCY = {
    "cpu": {"gemv": 0.200, "gemm": 0.247, "conv1x1": 0.353, "conv": 0.173},
    "cpu-avx2": {"gemv": 0.175, "gemm": 0.362, "conv1x1": 0.288, "conv": 0.226},
    "cuda": {"gemv": 0.20, "gemm": 0.05, "conv1x1": 0.05, "conv": 0.05},
}
MEASURED = {"cpu": True, "cpu-avx2": True, "cuda": False}
# The CPU rows by the x86-64 level the kernels run at (build_info's "cpu_isa").
CPU_ROW_OF_ISA = {"x86-64-v4": "cpu", "x86-64-v3": "cpu-avx2"}


def device_type(device):
    """The kernels a device runs: "cuda" for CUDA devices, "cpu" for every other (the ops run
    their CPU kernels there; other device types have no kernels of ours)."""
    return "cuda" if device is not None and torch.device(device).type == "cuda" else "cpu"


def cost_table(device):
    """The SPARSE_EFFICIENCY row that plans layers for `device`: "cuda" for CUDA devices; otherwise
    "cpu-avx2" where the CPU kernels run at x86-64-v3, and "cpu" where they run with AVX-512 (CPUs
    below AVX2 have no row of their own and use that one too)."""
    if device_type(device) == "cuda":
        return "cuda"
    return CPU_ROW_OF_ISA.get(build_info().get("cpu_isa"), "cpu")


def regime(kind, batch=1, kernel_size=None, stride=None, padding=None, out_pixels=None):
    """The SPARSE_EFFICIENCY entry that describes a layer (out_pixels: per image, when known)."""
    if kind == "Linear":
        return "gemv" if batch < 8 else "gemm"
    pointwise = tuple(kernel_size or ()) == (1, 1) and tuple(stride or ()) == (1, 1) and not any(padding or ())
    return "conv1x1" if pointwise and (out_pixels is None or out_pixels >= 8) else "conv"


def predicted_speedup(layer_regime, density, device="cpu"):
    """Predicted dense time / sparse time of a layer of this regime and density on `device`."""
    return SPARSE_EFFICIENCY[cost_table(device)][layer_regime] / max(density, 1e-9)


def plan_layer(kind, weight_shape, sparsity, *, min_sparsity, format="auto", layer_regime=None, device="cpu"):
    """Chooses the format of one Linear/Conv2d layer that will run on `device`.

    Layers below `min_sparsity` stay dense. With format='auto' the cost model of the device's type
    keeps a layer dense where it predicts the sparse kernel to be slower (`layer_regime`: see
    regime(); by default a Linear layer at batch 1 or a packed convolution); 'csr' and 'bsr:RxC'
    force the format (a BSR request falls back to CSR where BSR does not apply).
    """
    spec = FormatSpec.parse(format)
    if spec.kind == "dense":
        return LayerPlan("dense", None, "format='dense' requested")
    if sparsity < min_sparsity:
        return LayerPlan("dense", None, f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity:.3f}")
    if spec.kind == "bsr":
        bh, bw = spec.blocksize
        rows, cols = weight_shape[0], weight_shape[1]
        if kind != "Linear":
            return LayerPlan("csr", None, "bsr applies to Linear layers; csr used")
        if rows % bh or cols % bw:
            return LayerPlan("csr", None, f"blocks {bh}x{bw} do not divide {rows}x{cols}; csr used")
        return LayerPlan("bsr", (bh, bw), f"bsr {bh}x{bw} requested")
    if spec.kind == "csr":
        return LayerPlan("csr", None, "csr requested")
    estimate = predicted_speedup(layer_regime or regime(kind), 1.0 - sparsity, device)
    # The CUDA model is an unmeasured estimate (see SPARSE_EFFICIENCY): its reasons say so.
    model = "cost model" if MEASURED[cost_table(device)] else "cuda cost model (estimate, unmeasured)"
    if estimate < 1.0:
        return LayerPlan("dense", None, f"{model}: sparse est. {estimate:.2f}x dense")
    return LayerPlan("csr", None, f"{model}: sparse est. {estimate:.1f}x dense")

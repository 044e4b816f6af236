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
# layer at batch < 8, "gemm" a batched Linear layer up to batch 63, "gemm64" one from batch 64, "conv1x1" a 1x1
# stride-1 unpadded convolution, "conv" any other convolution, and a 1x1 one with fewer than 8 output pixels.
# benchmarks/calibrate_plan.py fits the rows from benchmarks: per regime, over the measured layers, the geometric
# mean of speedup x density (CPU rows) or its 10th percentile (CUDA row, see there).
#
# "cpu": from `make bench` on the reference machine (2-core AMD EPYC with AVX-512), over the DLMC layers of
# each regime (gemv: gather dot products; gemm: tiled SpMM at batch 32; gemm64: the same at batch 128;
# conv1x1: tiled SpMM straight on the input; conv: packed input, also the 1x1 one narrower than the SpMM's
# narrowest tile), at CALIBRATION_DENSITY. The Linear entries come from
# benchmarks/results/cpu-linear-2026-12-06-zen4-density.json (Zen 4; the convolutions' from
# cpu-conv-2026-11-21.json): until the first run with a batch of 128 (cpu-linear-2026-12-06-zen4.json) "gemm64"
# repeated "gemm" (0.247), which kept BERT-base dense at 70% sparsity, where its layers run 2.1-3.1x faster
# sparse at 128 tokens. Two runs an hour apart on this host gave gemm 0.283 and 0.395, gemv 0.182 and 0.205
# (the host's two vCPUs change placement; microsecond layers feel it most): the rows are one run's fit.
#
# "cpu-avx2": the same fit where the CPU kernels run at x86-64-v3 (AVX2, no AVX-512), from
# benchmarks/results/cpu-linear-2026-12-04-zen3.json and cpu-conv-2026-12-04-zen3.json (a 2-core AMD
# EPYC of family 25, Zen 3): dense sgemm is slower without AVX-512, and the SpMM's L1-sized column blocks
# pay off at moderate sparsity (BERT-base shapes, 128 tokens, in that run: sparse 1.7x dense at 70%). That
# run had no batch of 128: its "gemm64" repeats "gemm", and the row has no DENSITY_EXPONENT (flat).
#
# "cuda": measured on an H200 against cuBLAS and cuDNN in fp16/bf16, CUDA graphs
# (benchmarks/results/cuda-2026-12-04-csr-mma.json, `make gpu-check`): BERT-base and 11008x4096 layers and
# DLMC Transformer layers at batch 1, 8, 64 and 256, the ResNet-50 convolutions at batch 1 and 8. The CSR
# kernels run on CUDA cores (tensor cores for large layers from batch 64: csr_spmm.cu) and re-read each
# sparse row for every 8 batch rows while cuBLAS streams the weight once on tensor cores, so the
# efficiency falls with the batch (geometric means in the first run, cuda-2026-12-04.json: gemv 0.113,
# gemm 0.066 at batch 8, 0.025 at 64, 0.009 at 256). Layers of one regime spread 4x (launch-bound small ones,
# bandwidth-bound large ones: gemv 0.068-0.256), so the row holds each regime's 10th percentile rather than
# its mean: sparse where 9 in 10 of the measured layers would have won, i.e. from ~92% sparsity at batch 1,
# ~96% at batch 8-63, and practically never from batch 64 or for convolutions. On the measured layers
# themselves (in sample) that picks 4 of 88, all faster than cuBLAS (1.35-2.4x), where the mean would
# have picked 22 with 9 slower.
#
# Where a regime was timed over a spread of densities, its efficiency grows with the density (more nonzeros
# per row and column block amortise the same per-row and per-block work): DENSITY_EXPONENT holds (b, low,
# high) of efficiency(d) = SPARSE_EFFICIENCY x (d / CALIBRATION_DENSITY) ** b for d in [low, high], the
# densities it was fitted over (benchmarks/calibrate_plan.py: least squares of log efficiency on log density),
# held at the nearest end outside them rather than extrapolated; a regime without an entry is flat. The "cpu"
# row's are fitted with its efficiencies (gemm64 over the DLMC layers and BERT-base shapes at densities
# 0.05-0.5, 128 tokens; the convolutions over the DLMC ResNet-50 layers at 80-98%). Flat, gemm64's 0.414
# kept BERT-base dense at 50% sparsity, where its layers run 1.44-2.01x faster sparse, and conv's 0.173
# kept a third of ResNet-50's convolutions dense at 80%; whole fused models, old tables against these, in
# process (/tmp/bert/plan_ab.py outside the repo, 2 threads): BERT-base 50% batch 1 1.54x (every layer
# sparse), ResNet-50 80% batch 1 1.39x (53 of 54 sparse, against 33), 90% level (same plans); at batch 8,
# before the range was held (same plans at batch 1), 1.36x and 1.44x.
#
# Where these estimates are off for a machine, sparsify(..., autotune=True) measures instead.
CUDA_FIT_PERCENTILE = 10  # the CUDA row's statistic (benchmarks/calibrate_plan.py, bench_cuda's summary)
CALIBRATION_DENSITY = 0.1  # the density the efficiencies hold at: the DLMC layers' (90% sparsity)
SPARSE_EFFICIENCY = {
    "cpu": {"gemv": 0.205, "gemm": 0.395, "gemm64": 0.486, "conv1x1": 0.406, "conv": 0.216},
    "cpu-avx2": {"gemv": 0.175, "gemm": 0.362, "gemm64": 0.362, "conv1x1": 0.288, "conv": 0.226},
    "cuda": {"gemv": 0.0766, "gemm": 0.0423, "gemm64": 0.0087, "conv1x1": 0.0033, "conv": 0.0069},
}
DENSITY_EXPONENT = {
    "cpu": {"gemm64": (0.318, 0.05, 0.5), "conv1x1": (0.348, 0.02, 0.2), "conv": (0.561, 0.02, 0.2)},
}
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
        return "gemv" if batch < 8 else "gemm" if batch < 64 else "gemm64"
    pointwise = tuple(kernel_size or ()) == (1, 1) and tuple(stride or ()) == (1, 1) and not any(padding or ())
    return "conv1x1" if pointwise and (out_pixels is None or out_pixels >= 8) else "conv"


def efficiency(layer_regime, density, device="cpu"):
    """The sparse kernel's speed per multiply-add relative to dense torch for a layer of this regime and
    density on `device` (SPARSE_EFFICIENCY, grown or shrunk by DENSITY_EXPONENT)."""
    table = cost_table(device)
    flat = (0.0, CALIBRATION_DENSITY, CALIBRATION_DENSITY)
    exponent, low, high = DENSITY_EXPONENT.get(table, {}).get(layer_regime, flat)
    return SPARSE_EFFICIENCY[table][layer_regime] * (min(max(density, low), high) / CALIBRATION_DENSITY) ** exponent


def predicted_speedup(layer_regime, density, device="cpu"):
    """Predicted dense time / sparse time of a layer of this regime and density on `device`."""
    return efficiency(layer_regime, density, device) / max(density, 1e-9)


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
    if estimate < 1.0:
        return LayerPlan("dense", None, f"cost model: sparse est. {estimate:.2f}x dense")
    return LayerPlan("csr", None, f"cost model: sparse est. {estimate:.1f}x dense")

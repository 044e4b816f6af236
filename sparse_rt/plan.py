"""Per-layer format choice: which layers run sparse, in which format, and why."""

import re
from dataclasses import dataclass

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


# Speed of the sparse kernels relative to dense torch per multiply-add: a layer of density d is
# predicted to run efficiency / d times faster sparse. Fitted by benchmarks/calibrate_plan.py from
# `make bench` on the reference machine (2-core AMD EPYC with AVX-512), as the geometric mean of
# speedup x density over the DLMC layers of each regime: "gemv" a Linear layer at batch < 8 (gather
# dot products), "gemm" a batched Linear layer (tiled SpMM), "conv1x1" a 1x1 stride-1 unpadded
# convolution (tiled SpMM straight on the input), "conv" any other convolution (packed input), and a
# 1x1 one with fewer than 8 output pixels (narrower than the SpMM's narrowest tile).
# Where these estimates are off for a machine, sparsify(..., autotune=True) measures instead.
SPARSE_EFFICIENCY = {"gemv": 0.200, "gemm": 0.247, "conv1x1": 0.353, "conv": 0.173}


def regime(kind, batch=1, kernel_size=None, stride=None, padding=None, out_pixels=None):
    """The SPARSE_EFFICIENCY entry that describes a layer (out_pixels: per image, when known)."""
    if kind == "Linear":
        return "gemv" if batch < 8 else "gemm"
    pointwise = tuple(kernel_size or ()) == (1, 1) and tuple(stride or ()) == (1, 1) and not any(padding or ())
    return "conv1x1" if pointwise and (out_pixels is None or out_pixels >= 8) else "conv"


def predicted_speedup(layer_regime, density):
    """Predicted dense time / sparse time of a layer of this regime and density."""
    return SPARSE_EFFICIENCY[layer_regime] / max(density, 1e-9)


def plan_layer(kind, weight_shape, sparsity, *, min_sparsity, format="auto", layer_regime=None):
    """Chooses the format of one Linear/Conv2d layer.

    Layers below `min_sparsity` stay dense. With format='auto' the cost model keeps a layer dense
    where it predicts the sparse kernel to be slower (`layer_regime`: see regime(); by default a
    Linear layer at batch 1 or a packed convolution); 'csr' and 'bsr:RxC' force the format (a BSR
    request falls back to CSR where BSR does not apply).
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
    estimate = predicted_speedup(layer_regime or regime(kind), 1.0 - sparsity)
    if estimate < 1.0:
        return LayerPlan("dense", None, f"cost model: sparse est. {estimate:.2f}x dense")
    return LayerPlan("csr", None, f"cost model: sparse est. {estimate:.1f}x dense")

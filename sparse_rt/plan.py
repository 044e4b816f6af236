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


def plan_layer(kind, weight_shape, sparsity, *, min_sparsity, format="auto"):
    """Chooses the format of one Linear/Conv2d layer.

    Layers below `min_sparsity` stay dense: at low sparsity the indices cost more than the skipped
    multiply-adds save. A BSR request falls back to CSR where BSR does not apply.
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
        return LayerPlan("bsr", (bh, bw), f"sparsity {sparsity:.3f}, bsr {bh}x{bw} requested")
    return LayerPlan("csr", None, f"sparsity {sparsity:.3f} >= min_sparsity {min_sparsity:.3f}")

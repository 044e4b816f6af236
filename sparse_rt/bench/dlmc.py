"""The DLMC benchmark collection (Gale et al., 2020) as the benchmarks and tests use it: where it
lives, and the convolution geometry behind its flattened ResNet-50 matrices.

A ResNet-50 pattern is [Cout, Cin*kh*kw]. Its geometry is inferred: columns that are a power of two
>= 64 are a 1x1 convolution with Cin = cols; otherwise Cin is the largest power of two >= 64 with
cols / Cin a perfect square k*k (3x3 in ResNet-50); initial_conv is the 7x7 stem with Cin = 3.
Stride 2 applies to the stem and, as in ResNet-50 v1.5, to the 3x3 convolution and the projection
shortcut of the first block of groups 2-4. rn50_batchsizes.txt gives the output pixels per image, so
the output side is their square root, the input side output * stride, the padding k // 2.
"""

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_STRIDED = re.compile(r"^(initial_conv|bottleneck_(2|projection)_block_group_projection_block_group[234])$")


def dlmc_root(checkout):
    """$SPARSE_RT_DLMC, else shared/dlmc beside `checkout`, a repository checkout (the data is not
    installed with the package: the tests and benchmarks find it from where they stand)."""
    return Path(os.environ.get("SPARSE_RT_DLMC") or Path(checkout).resolve().parent / "shared" / "dlmc")


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    kernel: int
    stride: int
    padding: int
    in_side: int
    out_side: int


def rn50_output_pixels(root=None):
    """{layer name: output pixels per image} from rn50_batchsizes.txt."""
    text = (Path(root or dlmc_root()) / "rn50_batchsizes.txt").read_text()
    return {name: int(pixels) for name, pixels in (line.split(",") for line in text.split())}


def rn50_conv_geometry(name, cols, out_pixels):
    if name == "initial_conv":
        cin, k = 3, math.isqrt(cols // 3)
    elif cols >= 64 and cols & (cols - 1) == 0:
        cin, k = cols, 1
    else:
        cin = next(c for c in (2 ** p for p in range(int(math.log2(cols)), 5, -1))
                   if cols % c == 0 and math.isqrt(cols // c) ** 2 == cols // c)
        k = math.isqrt(cols // cin)
    if cin * k * k != cols:
        raise ValueError(f"{name}: cannot infer a convolution from {cols} columns")
    stride = 2 if _STRIDED.match(name) else 1
    out_side = math.isqrt(out_pixels)
    return ConvGeometry(cin, k, stride, k // 2, out_side * stride, out_side)


def pack_patterns(patterns, path):
    """Writes patterns, [(name, crow, col, (rows, cols), info dict)], to one compressed .npz: per
    pattern its row pointer (int32) and column indices (uint16, which holds every DLMC column
    count), with a JSON manifest of names, shapes and infos."""
    import numpy as np

    arrays, manifest = {}, []
    for i, (name, crow, col, shape, info) in enumerate(patterns):
        if shape[1] > 65536:
            raise ValueError(f"{name}: {shape[1]} columns do not fit uint16 indices")
        arrays[f"crow{i}"] = np.asarray(crow, dtype=np.int32)
        arrays[f"col{i}"] = np.asarray(col, dtype=np.uint16)
        manifest.append({"name": name, "shape": list(shape), "info": info})
    np.savez_compressed(path, manifest=np.array(json.dumps(manifest)), **arrays)


def load_packed(path):
    """[(name, crow, col, (rows, cols), info)] from a pack_patterns file; crow and col are int32
    torch tensors."""
    with np.load(path, allow_pickle=False) as data:
        manifest = json.loads(str(data["manifest"]))
        return [(m["name"], torch.from_numpy(data[f"crow{i}"].astype(np.int32)),
                 torch.from_numpy(data[f"col{i}"].astype(np.int32)), tuple(m["shape"]), m["info"])
                for i, m in enumerate(manifest)]

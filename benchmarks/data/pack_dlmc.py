#!/usr/bin/env python3
"""Packs the DLMC subset that travels with the repository (benchmarks/data/README.md says why):
one ResNet-50 layer of each distinct convolution geometry and two Transformer layers of each
shape, all at 90% magnitude pruning, read from the DLMC folder (../shared/dlmc or $SPARSE_RT_DLMC).

    python benchmarks/data/pack_dlmc.py
"""

import sys
from pathlib import Path

import sparse_rt
from sparse_rt.bench.dlmc import dlmc_root, pack_patterns, rn50_conv_geometry, rn50_output_pixels

HERE = Path(__file__).resolve().parent
# Encoder layer 0 and decoder layer 5: attention (512x512), FFN in (2048x512) and out (512x2048).
TRANSFORMER = [f"body_{part}_{layer}" for part in ("encoder_layer_0", "decoder_layer_5")
               for layer in ("self_attention_multihead_attention_q_fully_connected",
                             "ffn_conv1_fully_connected", "ffn_conv2_fully_connected")]


def main():
    root = dlmc_root(HERE.parent.parent)
    if not root.is_dir():
        sys.exit(f"DLMC patterns not found at {root} (set SPARSE_RT_DLMC)")
    pixels = rn50_output_pixels(root)
    rn50, seen = [], set()
    for path in sorted((root / "rn50" / "magnitude_pruning" / "0.9").glob("*.smtx.gz")):
        name = path.name.removesuffix(".smtx.gz")
        if name == "final_dense":
            continue
        csr = sparse_rt.formats.load_smtx(path)
        geo = rn50_conv_geometry(name, csr.shape[1], pixels[name])
        key = (csr.shape[0], geo.in_channels, geo.kernel, geo.stride, geo.in_side)
        if key not in seen:
            seen.add(key)
            rn50.append((name, csr.crow_indices, csr.col_indices, csr.shape, {"out_pixels": pixels[name]}))
    transformer = []
    for name in TRANSFORMER:
        csr = sparse_rt.formats.load_smtx(root / "transformer" / "magnitude_pruning" / "0.9" / f"{name}.smtx.gz")
        transformer.append((name, csr.crow_indices, csr.col_indices, csr.shape, {}))
    for file, patterns in (("dlmc-rn50-0.9.npz", rn50), ("dlmc-transformer-0.9.npz", transformer)):
        pack_patterns(patterns, HERE / file)
        print(f"{file}: {len(patterns)} patterns, {(HERE / file).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

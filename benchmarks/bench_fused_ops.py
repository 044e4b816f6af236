"""The ops fuse() calls for transformer blocks against the calls they replace, interleaved in one run.

On DLMC Transformer encoder layers (magnitude pruning 0.9, 512-wide): the feed-forward block
(csr_mlp against csr_linear, GELU, csr_linear, and dense torch) and the query/key/value projections
(csr_linears against three csr_linear calls, and dense torch), each fused op also with its weights
packed (ops.pack_csr: "fused-packed", its outputs checked equal too; the op compares the packing
with the weights on every call, which the timing includes); and attention over that width's 8
heads of 64 (sparse_rt's scaled_dot_product_attention against the matmul, softmax, matmul it
replaces and PyTorch's own F.scaled_dot_product_attention in the "dense" column, each with the
heads merged back into [tokens, 512]); and a transformer's residual connection, add_layer_norm against
the add and F.layer_norm it replaces (no dense column: both are dense). Each case's engines take turns
(sparse_rt.timing.compare_latency: interleaved rounds, rotating order), so drift of a shared
machine hits them alike. Before timing, csr_linears' outputs are checked equal to the unfused calls',
csr_mlp's within 1e-5 relative (its GELU, in the first layer's epilogue, is its own) and attention's
and add_layer_norm's too (their sums run in another order); packed outputs equal to unpacked ones.

    python benchmarks/bench_fused_ops.py     # writes benchmarks/results/fused-ops-DATE.json
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sparse_rt import ops
from sparse_rt.bench.dlmc import dlmc_root
from sparse_rt.formats import load_smtx
from sparse_rt.machine import busy_warning, load_average, machine_info
from sparse_rt.timing import compare_latency, median

PATTERNS = "transformer/magnitude_pruning/0.9"


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _weights(folder, layer, names):
    return [load_smtx(folder / f"body_encoder_layer_{layer}_{name}_fully_connected.smtx.gz", seed=i)
            for i, name in enumerate(names)]


def _csr(w):
    return w.crow_indices, w.col_indices, w.values


def _packing(w):
    return ops.pack_csr(*_csr(w), w.shape[1])


def ffn_engines(folder, layer, x):
    w1, w2 = _weights(folder, layer, ("ffn_conv1", "ffn_conv2"))
    d1, d2 = w1.to_dense(), w2.to_dense()
    p1, p2 = _packing(w1), _packing(w2)
    return {
        "fused": lambda: ops.csr_mlp(x, *_csr(w1), None, *_csr(w2), None, x.shape[1], "gelu"),
        "fused-packed": lambda: ops.csr_mlp(x, *_csr(w1), None, *_csr(w2), None, x.shape[1], "gelu",
                                            packed1=p1, packed2=p2),
        "unfused": lambda: ops.csr_linear(F.gelu(ops.csr_linear(x, *_csr(w1), None, x.shape[1])), *_csr(w2),
                                          None, w2.shape[1]),
        "dense": lambda: F.linear(F.gelu(F.linear(x, d1)), d2),
    }


def qkv_engines(folder, layer, x):
    ws = _weights(folder, layer, [f"self_attention_multihead_attention_{p}" for p in "qkv"])
    dense = [w.to_dense() for w in ws]
    lists = [list(t) for t in zip(*map(_csr, ws))]
    packings = [_packing(w) for w in ws]
    return {
        "fused": lambda: ops.csr_linears(x, *lists, [None] * 3, x.shape[1]),
        "fused-packed": lambda: ops.csr_linears(x, *lists, [None] * 3, x.shape[1], packed=packings),
        "unfused": lambda: [ops.csr_linear(x, *_csr(w), None, x.shape[1]) for w in ws],
        "dense": lambda: [F.linear(x, d) for d in dense],
    }


def attention_engines(x, heads=8):
    q, k, v = (x.roll(i, 0).unflatten(-1, (heads, -1)).transpose(0, 1).unsqueeze(0) for i in range(3))
    scale = q.shape[-1] ** -0.5
    merged = lambda out: out.transpose(1, 2).flatten(2)
    return {
        "fused": lambda: merged(ops.scaled_dot_product_attention(q, k, v, scale)),
        "unfused": lambda: merged(torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, -1), v)),
        "dense": lambda: merged(F.scaled_dot_product_attention(q, k, v, scale=scale)),
    }


def add_layer_norm_engines(x):
    residual = x.roll(1, 0)
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.rand(x.shape[1], generator=g) + 0.5, torch.randn(x.shape[1], generator=g)
    return {
        "fused": lambda: ops.add_layer_norm(x, residual, weight, bias, 1e-12),
        "unfused": lambda: F.layer_norm(x + residual, [x.shape[1]], weight, bias, 1e-12),
    }


WEIGHTLESS = {"attention": attention_engines, "add_layer_norm": add_layer_norm_engines}


def _check(block, layer, engines):
    fused, unfused = engines["fused"](), engines["unfused"]()
    where = block if layer is None else f"{block} layer {layer}"
    if block == "qkv":
        if not all(map(torch.equal, fused, unfused)):
            sys.exit(f"{where}: the fused op's outputs differ from the unfused calls'")
    elif (fused - unfused).abs().max() > 1e-5 * unfused.abs().max():
        sys.exit(f"{where}: the fused op's outputs are not within 1e-5 of the unfused calls'")
    if block not in WEIGHTLESS:
        packed = engines["fused-packed"]()
        pairs = [(packed, fused)] if block == "ffn" else zip(packed, fused)
        if not all(torch.equal(p, f) for p, f in pairs):
            sys.exit(f"{where}: the packed op's outputs differ from the unpacked op's")


def _label(layer):
    return "-" if layer is None else layer  # attention and add_layer_norm have no weights, so no layer


def _cell(value, form):
    return "-" if value is None else form.format(value)


def run(args):
    folder = dlmc_root(Path(__file__).parents[1]) / PATTERNS
    if not folder.is_dir():
        sys.exit(f"DLMC patterns not found at {folder} (set SPARSE_RT_DLMC)")
    torch.set_num_threads(args.threads)
    rows, start_load = [], load_average()
    cases = [(block, layer, tokens) for block in ("ffn", "qkv") for layer in args.layers for tokens in args.tokens]
    cases += [(block, None, tokens) for block in WEIGHTLESS for tokens in args.tokens]
    with torch.inference_mode():
        for i, (block, layer, tokens) in enumerate(cases):
            x = torch.randn(tokens, 512, generator=torch.Generator().manual_seed(layer or 0))
            if block in WEIGHTLESS:
                engines = WEIGHTLESS[block](x)
            else:
                engines = (ffn_engines if block == "ffn" else qkv_engines)(folder, layer, x)
            _check(block, layer, engines)
            samples = compare_latency(engines, min_time=args.min_time)
            p50 = {name: median(s) * 1e3 for name, s in samples.items()}
            rows.append({"block": block, "layer": layer, "tokens": tokens, "p50_ms": p50,
                         "fused_vs_unfused": p50["unfused"] / p50["fused"],
                         "fused_vs_dense": p50["dense"] / p50["fused"] if "dense" in p50 else None,
                         "packed_vs_fused": p50["fused"] / p50["fused-packed"] if "fused-packed" in p50 else None})
            log(f"[{i + 1}/{len(cases)}] {block} layer {_label(layer)} tokens {tokens}: fused {p50['fused']:.3f} ms, "
                f"{rows[-1]['fused_vs_unfused']:.2f}x unfused, {_cell(rows[-1]['fused_vs_dense'], '{:.2f}x')} dense, "
                f"packed {_cell(rows[-1]['packed_vs_fused'], '{:.2f}x')} unpacked")
    end_load = load_average()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "patterns": PATTERNS, "threads": args.threads,
            "machine": machine_info(), "load": {"start": start_load, "end": end_load},
            "warning": busy_warning(start_load, end_load, args.threads), "results": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4], help="DLMC encoder layers")
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 1024], help="input rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of interleaved rounds per case")
    parser.add_argument("--out", default=None, help="result file (default benchmarks/results/fused-ops-DATE.json)")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out or Path(__file__).parent / "results" / f"fused-ops-{datetime.date.today()}.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print("| block | layer | tokens | fused ms | unfused ms | dense ms | fused vs unfused | fused vs dense "
          "| fused packed ms | packed vs unpacked |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["results"]:
        p = r["p50_ms"]
        dense, vs_dense = _cell(p.get("dense"), "{:.3f}"), _cell(r["fused_vs_dense"], "{:.2f}x")
        packed, vs_unpacked = _cell(p.get("fused-packed"), "{:.3f}"), _cell(r["packed_vs_fused"], "{:.2f}x")
        print(f"| {r['block']} | {_label(r['layer'])} | {r['tokens']} | {p['fused']:.3f} | {p['unfused']:.3f} | "
              f"{dense} | {r['fused_vs_unfused']:.2f}x | {vs_dense} | {packed} | {vs_unpacked} |")
    if report["warning"]:
        print(f"WARNING: {report['warning']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

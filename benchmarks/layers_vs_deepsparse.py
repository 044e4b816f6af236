"""Fused sparse_rt against DeepSparse layer by layer: where a model's time goes in each engine.

    python benchmarks/layers_vs_deepsparse.py                                    # ResNet-50 90%, batch 8
    python benchmarks/layers_vs_deepsparse.py --model resnet50 --sparsity 0.95 --batch 1

sparse_rt: the model as bench_engines.py's "sparse_rt-fused" runs it (magnitude-pruned, sparsify()d,
fuse()d, called as SparseModel), each leaf module timed by forward hooks (sparse_rt.timing.layer_times;
a layer called once per part of a split batch adds its parts up); a graph that passes its layers to
functions (BERT's fused query/key/value and feed-forward ops) is timed node by node instead
(sparse_rt.timing.node_times, the batch whole). DeepSparse: `deepsparse.debug_analysis` in its own venv
(deepsparse_env.py) on the dense-with-zeros ONNX file bench_engines.py feeds it, which reports its own
per-layer times. Rows are matched by the ONNX node names the exporter derives from module names; rows
and nodes that share a module form one group (DeepSparse's fused "pyramid" rows cover several layers,
one fused op of ours several of its rows). Writes a JSON file
(default benchmarks/results/layers-DATE-MODEL-SPARSITY-bBATCH.json) and prints the table by kind of
layer. Both engines run one after the other, not interleaved: read the ratios, and rerun on a quiet
machine (the load is recorded).
"""

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from deepsparse_env import DeepSparseUnavailable, child_env, ensure_venv, export_onnx  # beside this file
from in_process_ab import RESULTS, fused_model, log, pruned_model

from sparse_rt import models
from sparse_rt.inputs import example_input
from sparse_rt.machine import busy_warning, load_average, machine_info
from sparse_rt.timing import layer_times, node_times

_ROW = re.compile(r"^(\S+)\s*\|.*\|\s*([0-9.]+)\s*\|\s*[0-9.]+\s*\|\s*[0-9.]+\s*\|\s*(\S.*)$")


def module_name(output_name):
    """The module an ONNX value like /layer2/layer2.0/downsample/downsample.0/Conv_output_0 comes from
    (layer2.0.downsample.0): each scope is its module's name, dotted relative to the scope before it."""
    scopes = output_name.strip("/").split("/")[:-1]
    parts, previous = [], None
    for scope in scopes:
        parent, _, child = scope.rpartition(".")
        parts.append(child if parent and parent == previous else scope)
        previous = scope
    return ".".join(parts)


def deepsparse_layers(onnx_path, batch, threads):
    """([(DeepSparse's row name, ms, [module names])], its forward in ms) from debug_analysis's
    per-layer table and total."""
    python = ensure_venv(create=False)
    command = [str(python.parent / "deepsparse.debug_analysis"), "-ncores", str(threads), "-b", str(batch),
               "-wi", "5", "-bi", "20", str(onnx_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        raise DeepSparseUnavailable(f"deepsparse.debug_analysis failed (exit {done.returncode}): {done.stderr[-500:]}")
    return read_debug_analysis(done.stdout)


def read_debug_analysis(text):
    """deepsparse_layers' result from debug_analysis's printed output."""
    total = re.search(r"^Total Time\(MS\):\s*([0-9.]+)", text, re.MULTILINE)
    if total is None:
        raise DeepSparseUnavailable(f"deepsparse.debug_analysis printed no total time: {text[-500:]}")
    rows = []
    for line in text.splitlines():
        match = _ROW.match(line)
        if match and not match.group(1).startswith("Name"):
            names = [module_name(n) for n in match.group(3).split(",") if n.strip().endswith("_output_0")]
            rows.append((match.group(1), float(match.group(2)), [n for n in names if n]))
    return rows, float(total.group(1))


def kind(module):
    """A layer's kind for the summary: its class and, for a convolution, its kernel and stride."""
    if hasattr(module, "kernel_size") and isinstance(module.kernel_size, tuple):
        return f"{type(module).__name__} {module.kernel_size[0]}x{module.kernel_size[1]} s{module.stride[0]}"
    return type(module).__name__


def layers_in_functions(graph_module):
    """Whether a graph passes modules to functions (a fused graph's sparse_linears, sparse_mlp): layers
    that hooks on leaf modules do not see."""
    modules = dict(graph_module.named_modules())
    return any(node.op == "get_attr" and node.target in modules and
               any(user.op == "call_function" for user in node.users) for node in graph_module.graph.nodes)


def node_kind(node, modules):
    """A timed graph node's kind: its module's (kind()), or the name of the function or method it calls."""
    if node.op == "call_module":
        return kind(modules[node.target])
    return getattr(node.target, "__name__", str(node.target))


def match(ours, theirs):
    """Groups of our timed entries ({label: (seconds, module names)}) and DeepSparse's rows ([(row, ms,
    module names)]) that share a module, joined transitively (one of its rows over several of our layers,
    one of ours over several of its rows): ([(our labels, their row indices)], our labels in none, their
    row indices in none), in the order of their rows."""
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    holders = {}
    for label, (_, names) in ours.items():
        for name in names:
            holders.setdefault(name, []).append(("ours", label))
    for index, (_, _, names) in enumerate(theirs):
        for name in names:
            for holder in holders.get(name, []):
                parent[root(holder)] = root(("theirs", index))
    groups = {}
    for index in range(len(theirs)):
        if ("theirs", index) in parent:
            groups.setdefault(root(("theirs", index)), ([], []))[1].append(index)
    for label in ours:
        if ("ours", label) in parent:
            groups[root(("ours", label))][0].append(label)
    return (list(groups.values()), [label for label in ours if ("ours", label) not in parent],
            [i for i in range(len(theirs)) if ("theirs", i) not in parent])


def compare(model_name, sparsity, batch, threads, seed=0):
    torch.set_num_threads(threads)
    sparse = fused_model(model_name, sparsity, seed)
    x = example_input(batch, models.input_shape(model_name), seed=seed)
    graph = sparse.module
    modules = dict(graph.named_modules())
    with torch.inference_mode():
        for _ in range(3):
            sparse(x)
        if layers_in_functions(graph):
            # Interpreted node by node (the graph run whole, as without SparseModel's split batch);
            # the forward's own time is taken apart, without the interpreter's Python.
            times, _, names = node_times(graph, (x,), max_seconds=10.0, max_runs=20)
            nodes = {node.name: node for node in graph.graph.nodes}
            ours = {label: (t, names[label]) for label, t in times.items()}
            kinds = {label: node_kind(nodes[label], modules) for label in times}
            start = time.perf_counter()
            for _ in range(10):
                sparse(x)
            wall = (time.perf_counter() - start) / 10
        else:
            times, wall = layer_times(graph, lambda: sparse(x), max_seconds=10.0, max_runs=20)
            ours = {label: (t, [label]) for label, t in times.items()}
            kinds = {label: kind(modules[label]) for label in times}
    with tempfile.TemporaryDirectory(prefix="layers_vs_deepsparse_") as tmp:
        pruned = pruned_model(model_name, sparsity, seed)
        path = export_onnx(pruned, example_input(1, models.input_shape(model_name), seed=seed),
                           Path(tmp) / "model.onnx")
        theirs, their_total = deepsparse_layers(path, batch, threads)
    grouped, rest_ours, rest_theirs = match(ours, theirs)
    groups = [{"deepsparse_rows": [theirs[i][0] for i in rows], "deepsparse_ms": sum(theirs[i][1] for i in rows),
               "layers": labels, "sparse_rt_ms": sum(ours[label][0] for label in labels) * 1e3,
               "kind": kinds[labels[0]] if len(labels) == 1 else "fused group"}
              for labels, rows in grouped]
    return {"sparse_rt_forward_ms": wall * 1e3, "deepsparse_forward_ms": their_total,
            "matched": groups,
            "unmatched_sparse_rt": {label: ours[label][0] * 1e3 for label in rest_ours},
            "unmatched_deepsparse": [{"row": theirs[i][0], "ms": theirs[i][1]} for i in rest_theirs]}


def summary(result):
    """Rows (kind, layers, sparse_rt ms, DeepSparse ms) summed by kind, fused groups and the rest last."""
    by_kind = {}
    for group in result["matched"]:
        entry = by_kind.setdefault(group["kind"], [0, 0.0, 0.0])
        entry[0] += len(group["layers"])
        entry[1] += group["sparse_rt_ms"]
        entry[2] += group["deepsparse_ms"]
    rows = [(k, *v) for k, v in sorted(by_kind.items())]
    rows.append(("not matched", len(result["unmatched_sparse_rt"]), sum(result["unmatched_sparse_rt"].values()),
                 sum(r["ms"] for r in result["unmatched_deepsparse"])))
    rows.append(("whole forward", None, result["sparse_rt_forward_ms"], result["deepsparse_forward_ms"]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", choices=models.names())
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    load_start = load_average()
    log(f"{args.model} {args.sparsity:g}, batch {args.batch}, {args.threads} threads")
    try:
        result = compare(args.model, args.sparsity, args.batch, args.threads)
    except DeepSparseUnavailable as e:
        sys.exit(f"layers_vs_deepsparse: {e}")
    load_end = load_average()
    info = machine_info()
    command = " ".join(["python", "benchmarks/layers_vs_deepsparse.py", *(sys.argv[1:] if argv is None else argv)])
    report = {"date": info["date"], "command": command,
              "machine": info["machine"], "versions": info["versions"], "config": vars(args) | {"out": str(args.out)},
              "load": {"start": load_start, "end": load_end,
                       "warning": busy_warning(load_start, load_end, args.threads)}, **result}
    date = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"layers-{date}-{args.model}-{args.sparsity:g}-b{args.batch}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'kind':34s} {'layers':>6s} {'sparse_rt ms':>12s} {'DeepSparse ms':>13s} {'ratio':>6s}")
    for name, count, ours, theirs in summary(result):
        ratio = f"{ours / theirs:.2f}x" if theirs else ""
        print(f"{name:34s} {'' if count is None else count:>6} {ours:12.2f} {theirs:13.2f} {ratio:>6s}")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()

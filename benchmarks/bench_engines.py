"""sparse_rt against the engines a CPU user would pick instead, end to end, in one run.

    python benchmarks/bench_engines.py                                  # the full sweep (hours)
    python benchmarks/bench_engines.py --models resnet50 --batch 1 --sparsity 0.9 --rounds 1 --block 2

Per model (ResNet-50, BERT-base encoder at 128 tokens), sparsity (magnitude-pruned, the stem left
dense) and batch size, the same pruned weights run in every engine on the same threads:

  torch-dense         the pruned model in PyTorch eager (dense kernels, zeros and all)
  sparse_rt           sparse_rt.sparsify(pruned, example_inputs=...): sparse_rt's PyTorch path (SPARSE_RT_VARIANTS
                      holds it and any further sparse_rt variants, name -> builder)
  sparse_rt-fused     the same, then model.fuse(): BatchNorm folded, residual sums and ReLUs in
                      the sparse kernels' epilogues
  sparse_rt-captured  sparse_rt-fused with model.capture(): the forward's ops recorded once and replayed
                      from C++, without Python between them (every engine runs under inference_mode)
  sparse_rt-fused-unpacked  the same with its Linear layers unpacked (SparseLinear.packs = False);
                      only when named in --engines: what packing gains, measured in the same run
  sparse_rt-fused-trusted  sparse_rt-fused run with trusted packings (sparse_rt.ops.trusted_packings:
                      no per-call comparison of the packings with the weights, packing from fewer rows);
                      only when named in --engines
  sparse_rt-captured-trusted  sparse_rt-captured run with trusted packings; only when named in --engines
  onnxruntime         the pruned model exported to ONNX (dense), stock onnxruntime
  onnxruntime-sparse  sparse_rt's ONNX sparse flavour (its own ops) in onnxruntime
  openvino            the same dense ONNX file in OpenVINO, fp32 forced, LATENCY hint
  deepsparse          DeepSparse 1.8.0 in its own venv (deepsparse_env.py) on a dense-with-zeros
                      ONNX file at opset 14, run by a worker process

Every engine's output is checked against torch-dense on the timed input: max |diff| / max |torch|
must stay within --tolerance (default 1e-4, fp32), or the engine is reported wrong and not timed.
Timing: engines take turns in blocks (sparse_rt.timing.compare_latency_blocks: after a warm-up
round, per round each engine makes --untimed calls after the switch, and more until --settle
seconds have passed, then --block timed calls; the order rotates), so DeepSparse in its process
takes turns like the others and thread pools that keep spinning after a run slow nobody's timed
calls. Speedups are p50 ratios within one configuration: against the fastest dense engine
(torch-dense, onnxruntime, openvino) and against torch-dense. Writes
benchmarks/results/engines-DATE.json (machine, CPU, versions, load averages, every figure) and a
PNG of speedup vs sparsity per engine, model and batch size.
"""

import argparse
import datetime
import gc
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from deepsparse_env import DeepSparseUnavailable, DeepSparseWorker, ensure_venv, export_onnx  # beside this file

import sparse_rt
from sparse_rt import models
from sparse_rt.bench.engines import (
    DenseOnnx,
    EngineUnavailable,
    onnxruntime_engine,
    onnxruntime_sparse_engine,
    openvino_engine,
    torch_engine,
)
from sparse_rt.bench.stats import latency_stats
from sparse_rt.inputs import example_input
from sparse_rt.machine import busy_warning, core_round_trip_ns, load_average, machine_info
from sparse_rt.nn import SparseLinear
from sparse_rt.timing import SETTLE_SECONDS, call_block, compare_latency_blocks

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet50", "bert_encoder")  # bert_encoder's standard input: 128 tokens of 768 features
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)

# sparse_rt's ways of running a pruned model: name -> builder(pruned nn.Module, example input)
# returning the module to time. The sparse ONNX flavour is exported from "sparse_rt"'s model. The
# example input lets the planner see each layer's rows (a transformer's Linear layers: every token).
def _planned(pruned, example):
    return sparse_rt.sparsify(pruned, example_inputs=(example,)).eval()


def _fused(pruned, example):
    model = _planned(pruned, example)
    model.fuse()
    return model


def _captured(pruned, example):
    return _fused(pruned, example).capture()


def _fused_unpacked(pruned, example):
    model = _fused(pruned, example)
    for layer in model.modules():
        if isinstance(layer, SparseLinear):
            layer.packs = False
    return model


class _TrustingPackings(torch.nn.Module):
    """A model whose calls run with trusted packings (sparse_rt.ops.trusted_packings)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with sparse_rt.ops.trusted_packings():
            return self.model(x)


def _fused_trusted(pruned, example):
    return _TrustingPackings(_fused(pruned, example)).eval()


def _captured_trusted(pruned, example):
    return _TrustingPackings(_captured(pruned, example)).eval()


SPARSE_RT_VARIANTS = {
    "sparse_rt": _planned,
    "sparse_rt-fused": _fused,
    "sparse_rt-captured": _captured,
    "sparse_rt-fused-unpacked": _fused_unpacked,
    "sparse_rt-fused-trusted": _fused_trusted,
    "sparse_rt-captured-trusted": _captured_trusted,
}
DENSE_ENGINES = ("torch-dense", "onnxruntime", "openvino")
ENGINES = ("torch-dense", *SPARSE_RT_VARIANTS, "onnxruntime", "onnxruntime-sparse", "openvino", "deepsparse")
# Run only when named: a variant that measures a feature of another.
OPT_IN_ENGINES = ("sparse_rt-fused-unpacked", "sparse_rt-fused-trusted", "sparse_rt-captured-trusted")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _csv(kind):
    def parse(text):
        values = [kind(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        return values
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=_csv(str), default=list(MODELS),
                   help=f"zoo models (default {','.join(MODELS)}; any of sparse_rt.models.names())")
    p.add_argument("--batch", type=_csv(int), default=[1, 8], help="batch sizes (default 1,8)")
    p.add_argument("--sparsity", type=_csv(float), default=list(SPARSITIES),
                   help=f"sparsities (default {','.join(map(str, SPARSITIES))})")
    p.add_argument("--engines", type=_csv(str), default=[e for e in ENGINES if e not in OPT_IN_ENGINES],
                   help=f"comma list of {', '.join(ENGINES)} (default: all but {', '.join(OPT_IN_ENGINES)})")
    p.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    p.add_argument("--block", type=int, default=5, help="timed calls per block (default 5)")
    p.add_argument("--untimed", type=int, default=2, help="untimed calls opening each block (default 2)")
    p.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                   help=f"and untimed calls until this many seconds of the block have passed (default "
                        f"{SETTLE_SECONDS:g}: the previous engine's spinning threads stop)")
    p.add_argument("--rounds", type=int, default=3, help="at least this many rounds of blocks (default 3)")
    p.add_argument("--time", type=float, default=0.0, help="and at least this many seconds of rounds per "
                   "configuration (default 0)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max |diff| / max |torch-dense| an engine's output may have (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    p.add_argument("--out", type=Path, help="result file (default benchmarks/results/engines-DATE.json)")
    p.add_argument("--plot", type=Path, help="PNG (default: the result file's name with .png)")
    args = p.parse_args(argv)
    problems = [f"unknown model(s) {', '.join(sorted(set(args.models) - set(models.names())))}"
                if set(args.models) - set(models.names()) else "",
                f"unknown engine(s) {', '.join(sorted(set(args.engines) - set(ENGINES)))}"
                if set(args.engines) - set(ENGINES) else "",
                "sparsities must be in [0, 1)" if any(not 0 <= s < 1 for s in args.sparsity) else "",
                "batch sizes, --threads, --block and --rounds must be >= 1"
                if min(*args.batch, args.threads, args.block, args.rounds) < 1 else "",
                "--untimed and --settle must be >= 0" if min(args.untimed, args.settle) < 0 else ""]
    if any(problems):
        p.error("; ".join(m for m in problems if m))
    args.engines = [e for e in ENGINES if e in args.engines]  # the documented order
    return args


@dataclass
class Prepared:
    block: object  # run(untimed, timed, settle) -> per-call seconds
    max_rel_diff: float
    note: str = ""


def _rel_diff(output, reference):
    """max |output - reference| / max |reference| (output a tensor or a numpy array), as the
    DeepSparse worker computes it."""
    out = torch.as_tensor(output).double()
    return ((out - reference.double()).abs().max() / reference.double().abs().max().clamp_min(1e-30)).item()


class LocalEngine:
    """A sparse_rt.bench Engine in this process: prepared per input, timed with call_block."""

    def __init__(self, engine):
        self.engine = engine

    def prepare(self, x, reference, workdir):
        fn = self.engine.prepare(x)
        return Prepared(call_block(fn), _rel_diff(fn(), reference), self.engine.note)


class DeepSparseEngine:
    """A dense-with-zeros opset-14 ONNX file of the pruned model, compiled per batch size in the
    DeepSparse worker, which checks the output and times the blocks."""

    def __init__(self, worker, pruned, example, workdir, threads):
        self.worker, self.threads = worker, threads
        self.path = export_onnx(pruned, example, Path(workdir) / "deepsparse.onnx")
        self.note = f"deepsparse {worker.versions['deepsparse']}, opset 14 dense-with-zeros ONNX, own process"

    def prepare(self, x, reference, workdir):
        tag = f"b{x.shape[0]}"
        np.save(Path(workdir) / f"x-{tag}.npy", x.numpy())
        np.save(Path(workdir) / f"y-{tag}.npy", reference.numpy())
        answer = self.worker.compile(self.path, x.shape[0], self.threads, Path(workdir) / f"x-{tag}.npy",
                                     Path(workdir) / f"y-{tag}.npy")
        log(f"    deepsparse compiled in {answer['compile_s']:.0f} s, "
            f"{answer['fraction_of_supported_ops']:.0%} of the graph native")
        return Prepared(self.worker.block, answer["max_rel_diff"],
                        f"{self.note}; {answer['fraction_of_supported_ops']:.0%} of the graph native")


def build_engines(names, pruned, example, workdir, threads, deepsparse):
    """({name: engine}, {name: reason it cannot run}) for one pruned model. `deepsparse` is a
    DeepSparseWorker, or the reason there is none (a str)."""
    engines, unavailable = {}, {}
    sparse = None
    dense_onnx = DenseOnnx(pruned, example, workdir)
    device = torch.device("cpu")
    for name in names:
        try:
            if name == "torch-dense":
                engine = LocalEngine(torch_engine(name, pruned))
            elif name in SPARSE_RT_VARIANTS:
                module = SPARSE_RT_VARIANTS[name](pruned, example)
                sparse = module if name == "sparse_rt" else sparse
                engine = LocalEngine(torch_engine(name, module))
            elif name == "onnxruntime":
                engine = LocalEngine(onnxruntime_engine(dense_onnx, threads=threads, device=device))
            elif name == "onnxruntime-sparse":
                sparse = sparse if sparse is not None else SPARSE_RT_VARIANTS["sparse_rt"](pruned, example)
                engine = LocalEngine(onnxruntime_sparse_engine(sparse, workdir, threads=threads, device=device))
            elif name == "openvino":
                engine = LocalEngine(openvino_engine(dense_onnx, threads=threads, device=device))
            else:
                if isinstance(deepsparse, str):
                    raise DeepSparseUnavailable(deepsparse)
                engine = DeepSparseEngine(deepsparse, pruned, example, workdir, threads)
        except (EngineUnavailable, DeepSparseUnavailable) as e:
            unavailable[name] = str(e)
            log(f"  {name}: unavailable: {e}")
            continue
        engines[name] = engine
    return engines, unavailable


def bench_config(engines, x, reference, workdir, args):
    """{name: row} for one input: each engine prepared and checked, then the good ones timed."""
    rows, blocks = {}, {}
    for name, engine in engines.items():
        try:
            prepared = engine.prepare(x, reference, workdir)
        except Exception as e:  # an export, a compilation or a run failing for this shape
            rows[name] = {"status": "failed", "note": f"{type(e).__name__}: {str(e)[:300]}"}
            log(f"  {name}: failed: {rows[name]['note']}")
            continue
        ok = prepared.max_rel_diff <= args.tolerance
        rows[name] = {"status": "ok" if ok else "wrong output", "note": prepared.note,
                      "max_rel_diff": prepared.max_rel_diff}
        if ok:
            blocks[name] = prepared.block
        else:
            log(f"  {name}: output differs from torch by {prepared.max_rel_diff:.1e} (relative), above "
                f"--tolerance {args.tolerance:g}: not timed")
    samples = compare_latency_blocks(blocks, block_calls=args.block, untimed_calls=args.untimed,
                                     settle=args.settle, min_time=args.time,
                                     min_rounds=args.rounds) if blocks else {}
    for name, s in samples.items():
        rows[name].update(latency_stats(s, x.shape[0]))
    timed = {n: r["p50_ms"] for n, r in rows.items() if "p50_ms" in r}
    dense = {n: ms for n, ms in timed.items() if n in DENSE_ENGINES}
    fastest = min(dense, key=dense.get) if dense else None
    for name, ms in timed.items():
        rows[name]["fastest_dense"] = fastest
        rows[name]["speedup_vs_fastest_dense"] = dense[fastest] / ms if fastest else None
        rows[name]["speedup_vs_torch_dense"] = timed["torch-dense"] / ms if "torch-dense" in timed else None
    return rows


def bench_pruned(model_name, base, sparsity, workdir, deepsparse, args, first, total):
    """The result rows of zoo model `base` pruned to `sparsity`, every engine at every batch size;
    `first` configurations of `total` are done (progress lines)."""
    shape = models.input_shape(model_name)
    pruned = sparse_rt.magnitude_prune(base, sparsity, exclude=models.keep_dense(model_name)).eval()
    log(f"{model_name} at sparsity {sparsity:g}: building the engines")
    engines, unavailable = build_engines(args.engines, pruned, example_input(1, shape, seed=args.seed), workdir,
                                         args.threads, deepsparse)
    results = []
    with torch.inference_mode():
        for i, batch in enumerate(args.batch):
            log(f"[{first + i + 1}/{total}] {model_name}, sparsity {sparsity:g}, batch {batch}")
            x = example_input(batch, shape, seed=args.seed)
            rows = bench_config(engines, x, pruned(x), workdir, args)
            rows.update({n: {"status": "unavailable", "note": why} for n, why in unavailable.items()})
            for name in args.engines:
                results.append({"model": model_name, "input_shape": list(shape), "sparsity": sparsity,
                                "batch": batch, "engine": name, **rows[name]})
                if "p50_ms" in rows[name]:
                    log(f"  {name:<20} p50 {rows[name]['p50_ms']:9.2f} ms  "
                        f"{_ratio(rows[name]['speedup_vs_fastest_dense'])} vs fastest dense "
                        f"({rows[name]['fastest_dense']})")
    return results


def run(args, command):
    load_start = load_average()
    warning = busy_warning(load_start, None, args.threads)
    if warning:
        log(f"WARNING: {warning}")
    torch.set_num_threads(args.threads)
    info = machine_info()
    round_trip_start = info["machine"]["core_round_trip_ns"]
    if round_trip_start is not None:
        log(f"a cache line's round trip between the first two CPUs: {round_trip_start:.0f} ns")
    report = {"date": info["date"], "command": command,
              "machine": info["machine"], "versions": {**info["versions"], "onnx": _version("onnx")},
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": []}
    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp, _deepsparse(args.engines, tmp) as deepsparse:
        if not isinstance(deepsparse, str):
            report["versions"]["deepsparse_venv"] = deepsparse.versions
        total = len(args.models) * len(args.sparsity) * len(args.batch)
        for model_name in args.models:
            torch.manual_seed(args.seed)
            base = models.create(model_name).eval()
            for sparsity in args.sparsity:
                workdir = Path(tmp) / f"{model_name}-{sparsity:g}"
                workdir.mkdir()
                report["results"] += bench_pruned(model_name, base, sparsity, workdir, deepsparse, args,
                                                  first=len(report["results"]) // len(args.engines), total=total)
                gc.collect()
                shutil.rmtree(workdir)  # its ONNX files: up to 1.5 GB per sparsity for BERT-base
    load_end = load_average()
    report["load"] = {"start": load_start, "end": load_end, "threads": args.threads,
                      "warning": busy_warning(load_start, load_end, args.threads),
                      "core_round_trip_ns": {"start": round_trip_start, "end": core_round_trip_ns()}}
    return report


class _deepsparse:
    """A DeepSparseWorker for the run, or the reason there is none (a str)."""

    def __init__(self, engines, tmp):
        self.wanted, self.tmp, self.worker = "deepsparse" in engines, tmp, None

    def __enter__(self):
        if not self.wanted:
            return "not requested"
        try:
            self.worker = DeepSparseWorker(ensure_venv(echo=log), Path(self.tmp) / "deepsparse.log")
        except DeepSparseUnavailable as e:
            log(f"deepsparse: unavailable: {e}")
            return str(e)
        return self.worker

    def __exit__(self, *exc):
        if self.worker is not None:
            self.worker.close()


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ratio(value):
    return "no dense engine" if value is None else f"{value:.2f}x"


def table(report):
    """A Markdown table: per model, batch and sparsity, each engine's p50 ms and its speedup over
    the fastest dense engine; then the engines' notes and why some did not run."""
    engines = report["config"]["engines"]
    lines = ["| model | batch | sparsity | " + " | ".join(engines) + " |", "| --- " * (3 + len(engines)) + "|"]
    cells, notes = {}, {}  # notes: an ordered set
    for r in report["results"]:
        key = (r["model"], r["batch"], r["sparsity"])
        if "p50_ms" in r:
            cells[key, r["engine"]] = f"{r['p50_ms']:.1f} ({_ratio(r['speedup_vs_fastest_dense'])})"
        else:
            cells[key, r["engine"]] = r["status"]
        if r["status"] != "ok" or r["note"]:
            notes[f"{r['engine']}: {r['status']}" + (f": {r['note']}" if r["note"] else "")] = None
    for key in sorted({k for k, _ in cells}):
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | " + " | ".join(cells.get((key, e), "") for e in engines)
                     + " |")
    lines.append("")
    lines.append("p50 ms per batch (speedup over the fastest dense engine of the same configuration); "
                 f"{report['config']['threads']} threads, {report['machine']['cpu']}, {report['date']}")
    lines += [f"- {note}" for note in notes]
    round_trip = report["load"].get("core_round_trip_ns") or {}
    if None not in (round_trip.get("start"), round_trip.get("end")):
        lines.append(f"- a cache line's round trip between the first two CPUs: {round_trip['start']:.0f} ns at the "
                     f"start, {round_trip['end']:.0f} ns at the end (sparse_rt.machine.core_round_trip_ns)")
    if report["load"]["warning"]:
        lines.append(f"WARNING: {report['load']['warning']}")
    return "\n".join(lines)


def plot(report, path):
    """Speedup over the fastest dense engine vs sparsity, per engine; one panel per model and batch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cfg = report["config"]
    rows, cols = len(cfg["models"]), len(cfg["batch"])
    fig = Figure(figsize=(max(7.0, 5.5 * cols), 4.2 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, model_name in enumerate(cfg["models"]):
        for j, batch in enumerate(cfg["batch"]):
            ax = axes[i][j]
            for engine in cfg["engines"]:
                points = sorted((r["sparsity"], r["speedup_vs_fastest_dense"]) for r in report["results"]
                                if (r["model"], r["batch"], r["engine"]) == (model_name, batch, engine)
                                and r.get("speedup_vs_fastest_dense") is not None)
                if points:
                    ax.plot(*zip(*points), marker="o", label=engine,
                            linestyle="--" if engine in DENSE_ENGINES else "-",
                            linewidth=2.5 if engine in SPARSE_RT_VARIANTS else 1.5)
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sparsity")
            ax.set_ylabel("speedup over the fastest dense engine")
            ax.set_title(f"{model_name}, batch {batch}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # with no dense engine timed there is no speedup to draw
                ax.legend(fontsize=8)
    busy = " - MACHINE BUSY (see report)" if report["load"]["warning"] else ""
    fig.suptitle(f"p50 speedup over the fastest dense engine, same run\n{cfg['threads']} threads, "
                 f"{report['machine']['cpu']}, {report['date'][:10]}{busy}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    out = args.out or RESULTS / f"engines-{date}.json"
    png = args.plot or out.with_suffix(".png")
    report = run(args, " ".join(["python", "benchmarks/bench_engines.py", *argv]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, png)
    print(table(report))
    log(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

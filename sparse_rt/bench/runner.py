"""sparse_rt.bench.run: sparse_rt against its baselines, interleaved in one run, with ShrinkBench
metrics and a per-layer time profile; returns a BenchReport."""

import contextlib
import copy
import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import spec_input_shape
from ..convert import parse_dtype
from ..inputs import example_input
from ..machine import busy_warning, load_average, machine_info
from ..metrics import model_metrics
from ..model import SparseModel, sparsify
from ..nn.surgery import dense_copy
from ..pruning import magnitude_prune
from ..resolve import resolve_model
from ..timing import call_block, compare_latency, compare_latency_blocks, cuda_graph_replay, layer_times, warm_up
from .engines import (
    BASELINES,
    DenseOnnx,
    EngineUnavailable,
    onnxruntime_engine,
    onnxruntime_sparse_engine,
    openvino_engine,
    parse_baselines,
    torch_engine,
    torch_sparse_model,
)
from .report import BenchReport
from .stats import latency_stats

SUBJECT = "sparse_rt"


@dataclass
class _Variant:
    sparsity: float  # None when the model came pruned
    model: SparseModel


def load_variants(model, sparsity=None, *, arch=None, seed=0, trust_arch=False, device=None):
    """(name, [variants], per-sample input shape or None) for what `run` accepts as `model`:
    a SparseModel; an nn.Module (pruned already, or magnitude-pruned to each `sparsity`); or a
    reference sparse_rt.resolve.resolve_model takes (a .srt path, a checkpoint path with `arch`,
    a zoo name with `sparsity`: magnitude-pruned, seeded, its stem left dense). What is converted
    here is planned for `device` (sparse_rt.sparsify)."""
    sparsities = _sparsities(sparsity)
    if isinstance(model, SparseModel):
        if sparsities:
            raise ValueError("sparsity applies to a dense model or a zoo name, not to a SparseModel")
        return "model", [_Variant(None, model)], spec_input_shape(model.arch_spec)
    if isinstance(model, nn.Module):
        pruned = [(s, magnitude_prune(model, s)) for s in sparsities] or [(None, model)]
        return type(model).__name__, [_Variant(s, sparsify(m.eval(), device=device)) for s, m in pruned], None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a SparseModel, an nn.Module or a str, got {type(model).__name__}")
    name = os.path.basename(os.fspath(model))
    variants, shape = [], None
    for s in sparsities or [None]:
        resolved, _, shape = resolve_model(model, arch=arch, sparsity=s, seed=seed, trust_arch=trust_arch,
                                           device=device)
        if not isinstance(resolved, SparseModel):
            raise ValueError(f"{name} holds an ensemble; sparse-rt bench times single models")
        variants.append(_Variant(s, resolved))
    return name, variants, shape


def _sparsities(sparsity):
    if sparsity is None:
        return []
    values = [float(s) for s in sparsity.split(",")] if isinstance(sparsity, str) else (
        [float(s) for s in sparsity] if isinstance(sparsity, (list, tuple)) else [float(sparsity)])
    for s in values:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
    return values


def _model_dtype(model):
    floating = (t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    return next(floating, torch.ones(0)).dtype


def _batches(batch, inputs):
    if batch is None:
        return [inputs.shape[0]] if isinstance(inputs, torch.Tensor) else [1]
    values = [int(b) for b in batch.split(",")] if isinstance(batch, str) else (
        [int(b) for b in batch] if isinstance(batch, (list, tuple)) else [int(batch)])
    if not values or min(values) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {batch!r}")
    return values


def _input_maker(inputs, shape, seed, device, dtype, tokens=None):
    """batch size -> input tensor: rows of `inputs` (a tensor, cycled to the batch size) or seeded
    random samples of `inputs` / `shape` (a per-sample shape): normal floats, or token ids below
    `tokens`."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() < 1 or inputs.shape[0] < 1:
            raise ValueError("inputs must be a tensor with a nonempty batch dimension")
        cast = dtype if inputs.is_floating_point() else inputs.dtype
        return lambda b: inputs[torch.arange(b) % inputs.shape[0]].to(device=device, dtype=cast)
    shape = tuple(inputs) if inputs is not None else shape
    if shape is None:
        raise ValueError("the input shape is unknown for this model: pass inputs (a tensor) or a "
                         "per-sample shape (--input-shape, e.g. 3,224,224)")
    return lambda b: example_input(b, shape, tokens=tokens, seed=seed, dtype=dtype, device=device)


def run(model, inputs=None, *, batch=None, sparsity=None, arch=None, baselines=BASELINES, device="cpu",
        dtype=None, threads=None, warmup=2.0, time=10.0, min_iterations=1, cuda_graphs=False, seed=0,
        progress=False, tokens=None, trust_arch=False, fuse=False, capture=False, store_weights=None):
    """Benchmarks sparse_rt against `baselines` (BASELINES: 'dense', 'torch-sparse', 'onnxruntime',
    'onnxruntime-sparse', 'openvino'; one that cannot run here is recorded with the reason) and
    returns a BenchReport (print it, .to_json(), .to_csv(), .plot()).

    model:     a SparseModel, an nn.Module (already pruned, or pruned here to each `sparsity`),
               a .srt path, a checkpoint path with `arch`, or a zoo name with `sparsity`.
    inputs:    a tensor (its rows are cycled to each batch size) or a per-sample shape such as
               (3, 224, 224) for seeded random inputs; None takes the zoo model's standard shape.
    tokens:    the inputs are token ids below this vocabulary size (a per-sample shape is then the
               sequence length: BERT, GPT-2, T5); a model returning several outputs (Hugging Face
               ModelOutput) is compared and timed on its first.
    trust_arch: let a .srt import the module its architecture names (as sparse_rt.load).
    fuse:      time sparse_rt's model after SparseModel.fuse() (BatchNorm folded, residual sums and
               ReLUs in the kernels); the baselines are built from the model before fusion.
    capture:   time sparse_rt's model replaying its forward from C++ (SparseModel.capture(), after
               `fuse`); its per-layer profile runs eagerly (a replay calls no module hooks).
    store_weights: 'bf16' or 'fp16': time sparse_rt's model with its sparse layers' values kept in that
               dtype (SparseModel.store_weights, after `fuse`; activations stay fp32); the baselines
               keep the fp32 weights, so the outputs differ by the weights' rounding.
    batch:     batch sizes ("1,8,32" or [1, 8, 32]); sparsity: one value or several ("0.5,0.9").
    warmup:    seconds each engine runs before timing, per batch size (0: none).
    time:      seconds of interleaved timing rounds per batch size, at least `min_iterations` timed
               calls per engine (on the CPU in turns of 5 calls, each after 0.3 s of untimed ones).
    threads:   intra-op threads of torch, onnxruntime and OpenVINO for the run (default: torch's);
               the report warns when the machine's load average exceeds them (busy machine).
    dtype:     'fp32', 'fp16', 'bf16'.
    """
    load_start = load_average()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device 'cuda' requested, but CUDA is not available (torch {torch.__version__})")
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs needs device='cuda'")
    if warmup < 0 or time < 0 or min_iterations < 1:
        raise ValueError("warmup and time must be >= 0 and min_iterations >= 1")
    dtype = parse_dtype(dtype)
    stored = parse_dtype(store_weights)
    if stored not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"store_weights must be 'bf16' or 'fp16', got {store_weights!r}")
    baselines = parse_baselines(baselines)
    batches = _batches(batch, inputs)
    name, variants, shape = load_variants(model, sparsity, arch=arch, seed=seed, trust_arch=trust_arch,
                                          device=device)
    dtype = dtype or _model_dtype(variants[0].model)
    make_input = _input_maker(inputs, shape, seed, device, dtype, tokens)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        settings = _Settings(baselines, batches, device, warmup, time, min_iterations, cuda_graphs, tokens, fuse,
                             capture, stored)
        data = {**machine_info(), "model": {"name": name, "input_shape": list(make_input(1).shape[1:])},
                "config": {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
                           "threads": torch.get_num_threads(), "batches": batches, "baselines": baselines,
                           "warmup_s": warmup, "time_s": time, "min_iterations": min_iterations,
                           "cuda_graphs": cuda_graphs, "seed": seed, "tokens": tokens, "fuse": fuse,
                           "capture": capture, "store_weights": store_weights},
                "variants": []}
        with _progress(progress, len(variants) * len(batches)) as step, torch.inference_mode():
            for variant in variants:
                sparse = variant.model.to(device=device, dtype=dtype).eval()
                data["variants"].append({"sparsity": variant.sparsity,
                                         **_bench_model(sparse, make_input, settings, step, variant.sparsity)})
        load_end = load_average()
        data["load"] = {"start": load_start, "end": load_end, "threads": data["config"]["threads"],
                        "warning": busy_warning(load_start, load_end, data["config"]["threads"])}
    finally:
        torch.set_num_threads(previous_threads)
    return BenchReport(data)


@dataclass
class _Settings:
    baselines: list
    batches: list
    device: torch.device
    warmup: float
    seconds: float
    min_iterations: int
    cuda_graphs: bool
    tokens: int  # the inputs are token ids below it (None: floats)
    fuse: bool  # sparse_rt's model is fused after the baselines are built from it
    capture: bool  # then replays its forward from C++ (SparseModel.capture)
    store_weights: torch.dtype  # after fusion, its sparse values kept in this dtype (None: as they are)


def _bench_model(sparse, make_input, settings, step, sparsity):
    """{metrics, engines, results, layers, forward_ms} of one SparseModel over the batch sizes."""
    with tempfile.TemporaryDirectory(prefix="sparse_rt_bench_") as tmp:
        engines, status = _build_engines(sparse, settings.baselines, make_input(1), settings.device, tmp)
        fusion = {"fusion": sparse.fuse().to_json()} if settings.fuse and sparse.fusion is None else {}
        if settings.store_weights is not None:
            sparse.store_weights(settings.store_weights)
        if settings.capture:
            sparse.capture()
        return {**fusion, **_time_engines(sparse, engines, status, make_input, settings, step, sparsity)}


def _time_engines(sparse, engines, status, make_input, settings, step, sparsity):
    module, cuda = sparse.module, settings.device.type == "cuda"
    metrics = model_metrics(module, tuple(make_input(1).shape[1:]), tokens=settings.tokens)
    results, profiles, captures = [], [], {}
    for b in settings.batches:
        step(("" if sparsity is None else f"sparsity {sparsity:g}, ") + f"batch {b}")
        x = make_input(b)
        fns = _prepare(engines, status, x, settings.cuda_graphs, check=b == settings.batches[0], batch=b)
        samples = _interleaved_samples(fns, settings, cuda)
        stats = {name: latency_stats(s, b) for name, s in samples.items()}
        for name, s in stats.items():
            speedup = None if name == SUBJECT else s["p50_ms"] / stats[SUBJECT]["p50_ms"]
            results.append({"batch": b, "engine": name, **s, "speedup": speedup})
        if settings.capture:
            captures[str(b)] = sorted(set(sparse.capture_report().values()))  # what the timed calls did
            sparse.capture(False)  # the profile's hooks see eager calls only
        profiles.append(layer_times(module, lambda: sparse(x), max_seconds=settings.seconds / 4, cuda=cuda))
        if settings.capture:
            sparse.capture()
    return {"metrics": metrics.as_dict(), "engines": status, "results": results,
            **({"capture": captures} if captures else {}),
            "layers": _layer_rows(module, sparse.summary(), metrics, profiles),
            "forward_ms": [wall * 1e3 for _, wall in profiles]}


def _build_engines(sparse, baselines, example, device, tmp):
    """({name: Engine}, {name: status dict}); a baseline that cannot run is recorded, not fatal.
    Every engine runs on torch's thread count (set by `run`). ONNX files go to the folder `tmp`,
    some when an engine is prepared for a batch size."""
    dense = dense_copy(sparse.module).eval()
    threads = torch.get_num_threads()
    engines = {SUBJECT: torch_engine(SUBJECT, sparse)}
    status = {SUBJECT: {"status": "ok", "note": ""}}
    dense_onnx = DenseOnnx(dense, example, tmp)
    builders = {
        "dense": lambda: torch_engine("dense", dense),
        "torch-sparse": lambda: torch_engine("torch-sparse", *torch_sparse_model(dense, sparse.summary())),
        "onnxruntime": lambda: onnxruntime_engine(dense_onnx, threads=threads, device=device),
        # Its own copy: it exports on first use, after fuse() has folded BatchNorms into the shared layers.
        "onnxruntime-sparse": lambda: onnxruntime_sparse_engine(copy.deepcopy(sparse.module), tmp, threads=threads,
                                                                device=device),
        "openvino": lambda: openvino_engine(dense_onnx, threads=threads, device=device),
    }
    for name in baselines:
        try:
            engine = builders[name]()
        except EngineUnavailable as e:
            status[name] = {"status": "unavailable", "note": str(e)}
            continue
        engines[name] = engine
        status[name] = {"status": "ok", "note": engine.note}
    return engines, status


# A baseline whose output is further than this from sparse_rt's (max |diff| / max |sparse_rt|) computes
# another model: it is dropped from the run, not timed and ranked. Loose enough for 16-bit activations
# and 16-bit stored weights (below 2e-2 on the zoo's models), tight enough for an export that lost a
# layer or a BatchNorm (1.83 on cifar_resnet, timed until 8158445).
WRONG_OUTPUT_REL = 0.1


def _prepare(engines, status, x, cuda_graphs, check, batch):
    """{name: zero-argument callable} for input x. With `check` (the first batch size; the weights
    and code paths are the same at the others), each engine runs once first: its output is checked
    against sparse_rt's (max |diff| / max |sparse_rt|). A baseline that fails to prepare (an
    export, a compilation for this shape) or to run, or whose output is more than WRONG_OUTPUT_REL
    off, is dropped from the run with the reason recorded; the dense model (the model as given)
    that far off means sparse_rt's output is wrong, an error."""
    fns, reference = {}, None
    for name, engine in list(engines.items()):
        try:
            fn = engine.prepare(x)
            out = _first_tensor(fn()).to(x.device).float() if check else None
        except Exception as e:  # a baseline may lack a kernel for this dtype, device or shape
            if name == SUBJECT:
                raise
            state = "unavailable" if isinstance(e, EngineUnavailable) else "failed"
            status[name] = {"status": state, "note": f"batch {batch}: {type(e).__name__}: {str(e)[:300]}"}
            del engines[name]
            continue
        if check:
            reference = out if reference is None else reference  # sparse_rt runs first
            diff = ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()
            status[name]["max_rel_diff"] = diff
            if not diff <= WRONG_OUTPUT_REL:  # NaN too
                if name == "dense":
                    raise RuntimeError(f"sparse-rt bench: sparse_rt's output differs from the dense model's by "
                                       f"{diff:.2e} (max |diff| / max |sparse_rt|) at batch {batch}: not timing a "
                                       f"model that computes something else")
                status[name] = {**status[name], "status": "wrong output",
                                "note": f"batch {batch}: output {diff:.2e} off sparse_rt's (above "
                                        f"{WRONG_OUTPUT_REL:g}): not timed"}
                del engines[name]
                continue
        fns[name] = _cuda_graph(fn, status[name]) if cuda_graphs and engine.graphable else fn
    return fns


# Timed calls per turn on the CPU (_interleaved_samples).
BLOCK_CALLS = 5


def _interleaved_samples(fns, settings, cuda):
    """{name: sorted per-call seconds} of the engines taking turns. On CUDA call by call; on the CPU
    in blocks, each opening with untimed calls until the previous engine's threads have stopped
    spinning (onnxruntime's made the next engine's calls 2x slower for about 80 ms: timing.py)."""
    if cuda:
        return compare_latency(fns, warmup=settings.warmup, min_time=settings.seconds,
                               min_rounds=settings.min_iterations, cuda=True)
    warm_up(fns, settings.warmup)
    rounds = -(-settings.min_iterations // BLOCK_CALLS)
    return compare_latency_blocks({name: call_block(fn) for name, fn in fns.items()}, block_calls=BLOCK_CALLS,
                                  min_time=settings.seconds, min_rounds=rounds)


def _first_tensor(output):
    """A model's output as one tensor: itself, or the first of a tuple, list or dict (a Hugging Face
    ModelOutput), or of an onnxruntime result list."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, dict):
            output = next(iter(output.values()))
        elif isinstance(output, (tuple, list)):
            output = output[0]
        else:
            return torch.as_tensor(output)
    return output


def _cuda_graph(fn, status):
    """fn replayed from a CUDA graph (launch overhead removed), or fn itself if capture fails."""
    try:
        replay = cuda_graph_replay(fn)
    except RuntimeError as e:
        status["cuda_graph"] = f"capture failed, eager: {str(e)[:200]}"
        return fn
    status["cuda_graph"] = "on"
    return replay


def _layer_rows(module, summary, metrics, profiles):
    """Per leaf layer: planner decision and reason (Linear/Conv2d), ShrinkBench metrics, and the
    measured time and share of the forward per batch size."""
    plans = {row.name: row for row in summary}
    counts = {m.name: m for m in metrics.layers}
    rows = []
    for name in profiles[0][0]:
        row = {"name": name, "kind": type(module.get_submodule(name)).__name__, "format": None,
               "reason": None, "density": None}
        if name in plans:
            plan = plans[name]
            row.update(kind=plan.kind, format=plan.label, reason=plan.reason, density=plan.density)
        if name in counts:
            m = counts[name]
            row.update(kind=m.kind, shape=list(m.shape), params=m.params, nonzeros=m.nonzeros,
                       compression_ratio=m.params / m.nonzeros if m.nonzeros else float("inf"),
                       dense_macs=m.dense_macs, nonzero_macs=m.nonzero_macs,
                       theoretical_speedup=(m.dense_macs / m.nonzero_macs if m.nonzero_macs
                                            else float("inf")) if m.dense_macs is not None else None)
        row["time_ms"] = [times.get(name, 0.0) * 1e3 for times, _ in profiles]
        row["time_share"] = [times.get(name, 0.0) / wall if wall else 0.0 for times, wall in profiles]
        rows.append(row)
    return rows


@contextlib.contextmanager
def _progress(enabled, total):
    """Yields step(description): a rich progress bar over the sweep's configurations (on stderr)."""
    if not enabled:
        yield lambda description: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("bench {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=total)
        started = [False]

        def step(description):
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=description)

        yield step
        bar.update(task, completed=total)

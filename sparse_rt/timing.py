"""Same-run latency: interleaved timing of several callables, and per-layer time profiles."""

import statistics
import time

import torch


class _Clock:
    """Times one call: perf_counter on CPU; on CUDA, events on the current stream with a
    synchronize, so asynchronous launches are not mistaken for finished work."""

    def __init__(self, cuda=False):
        self.cuda = cuda

    def __call__(self, fn):
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def warm_up(fns, seconds, *, cuda=False):
    """Calls each callable for `seconds` (at least once when seconds > 0)."""
    if seconds <= 0:
        return
    for fn in fns.values():
        deadline = time.perf_counter() + seconds
        while True:
            fn()
            if cuda:
                torch.cuda.synchronize()
            if time.perf_counter() >= deadline:
                break


def compare_latency(fns, *, warmup=0.2, min_time=1.0, min_rounds=5, cuda=False):
    """Times several zero-argument callables in interleaved rounds (so machine drift hits them all
    alike; the order rotates each round so none always runs first) and returns
    {name: sorted per-call seconds}. `cuda=True` times with CUDA events and synchronizes."""
    warm_up(fns, warmup, cuda=cuda)
    clock = _Clock(cuda)
    return _rotating_rounds(list(fns), lambda name: [clock(fns[name])], min_rounds, min_time)


def _rotating_rounds(names, take, min_rounds, min_time):
    """{name: sorted samples}: rounds in which each name in turn, the order rotating each round,
    adds take(name) (a list of seconds) to its samples, for at least `min_rounds` rounds and
    `min_time` seconds."""
    samples = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        for i in range(len(names)):
            name = names[(i + rounds) % len(names)]
            samples[name].extend(take(name))
        rounds += 1
    return {name: sorted(s) for name, s in samples.items()}


def call_block(fn):
    """A block runner for compare_latency_blocks: run(untimed, timed, settle=0) calls `fn` `untimed`
    times, and again until `settle` seconds have passed since the block began, then `timed` times
    each timed with perf_counter, and returns those seconds."""
    def run(untimed, timed, settle=0.0):
        deadline = time.perf_counter() + settle
        calls = 0
        while calls < untimed or time.perf_counter() < deadline:
            fn()
            calls += 1
        samples = []
        for _ in range(timed):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return samples

    return run


# How long an engine keeps running untimed calls after taking its turn (compare_latency_blocks'
# default). Thread pools that spin after a run slow whatever runs next on the same cores: after
# onnxruntime's (2 threads, a Zen 4), fused BERT-base at batch 1 ran its next calls at 2x its time
# for about 80 ms, and DeepSparse its next at up to 3x for up to 200 ms; two untimed calls of a
# 30 ms model did not outlast that.
SETTLE_SECONDS = 0.3


def compare_latency_blocks(blocks, *, block_calls=5, untimed_calls=2, settle=SETTLE_SECONDS, min_time=0.0,
                           min_rounds=3):
    """Times engines that take turns in blocks and returns {name: sorted per-call seconds}.

    `blocks` maps a name to run(untimed, timed, settle) -> list of per-call seconds (call_block
    wraps a callable; an engine in another process answers the same request). A first round warms
    each engine with untimed_calls + block_calls untimed calls; then, in at least `min_rounds`
    rounds and `min_time` seconds, each engine in turn (the order rotating each round) makes at
    least `untimed_calls` untimed calls after the switch, and more until `settle` seconds have
    passed, then `block_calls` timed ones. For CPU engines with thread pools of their own, which
    keep spinning for a while after a run and would slow whichever engine ran next if they
    alternated call by call (compare_latency), and for engines in other processes, whose calls
    cannot be interleaved one by one."""
    if block_calls < 1 or untimed_calls < 0 or settle < 0 or min_rounds < 1:
        raise ValueError("block_calls and min_rounds must be >= 1, untimed_calls and settle >= 0")
    names = list(blocks)
    for name in names:
        blocks[name](untimed_calls + block_calls, 0, settle)
    return _rotating_rounds(names, lambda name: blocks[name](untimed_calls, block_calls, settle), min_rounds,
                            min_time)


def cuda_graph_replay(fn, warmup_calls=2):
    """A zero-argument callable replaying `fn` from a CUDA graph (launch overhead removed). fn runs
    `warmup_calls` times on a side stream first, as torch.cuda.graphs advises (lazy initialisation
    must not happen during capture). Raises RuntimeError when fn cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def median(samples):
    return statistics.median(samples)


def layer_times(module, fn, *, max_seconds, max_runs=3, cuda=False):
    """Per-leaf-module time of `fn()` (which runs `module`), with forward hooks around every leaf
    module, averaged over up to `max_runs` runs (at least one; no more once `max_seconds` have
    passed). Returns ({leaf name: seconds per run}, seconds per run of the whole call)."""
    leaves = [(n, m) for n, m in module.named_modules() if n and not any(True for _ in m.children())]
    marks, handles = [], []

    def pre(name):
        def hook(mod, args):
            marks.append((name, _mark(cuda)))
        return hook

    def post(name):
        def hook(mod, args, output):
            marks.append((name, _mark(cuda)))
        return hook

    for name, leaf in leaves:
        handles.append(leaf.register_forward_pre_hook(pre(name)))
        handles.append(leaf.register_forward_hook(post(name)))
    totals, wall, runs = {}, 0.0, 0
    clock = _Clock(cuda)
    try:
        start = time.perf_counter()
        while runs < 1 or (runs < max_runs and time.perf_counter() - start < max_seconds):
            marks.clear()
            wall += clock(fn)
            # Hooks fire pre, post per leaf call; a leaf called twice (a shared ReLU) adds up.
            for (name, t0), (_, t1) in zip(marks[0::2], marks[1::2]):
                totals[name] = totals.get(name, 0.0) + _elapsed(t0, t1, cuda)
            runs += 1
    finally:
        for h in handles:
            h.remove()
    return {name: t / runs for name, t in totals.items()}, wall / runs


def node_times(graph_module, args, *, max_seconds, max_runs=3, cuda=False):
    """Per-node time of a torch.fx GraphModule run on `args` by an fx Interpreter, for graphs that
    call their layers through functions (a fused graph's sparse_linears or sparse_mlp, given the
    modules as arguments), which layer_times' hooks on leaf modules do not see; averaged like
    layer_times. Returns ({node name: seconds per run}, seconds per interpreted run, {node name: the
    modules it calls or is given}). The interpreter adds Python per node: the whole interpreted run is
    slower than the module's own forward."""
    modules = dict(graph_module.named_modules())
    computing = ("call_module", "call_function", "call_method")

    def module_names(node):
        if node.op == "call_module":
            return [node.target]
        names = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda a: names.append(a.target)
                              if a.op == "get_attr" and a.target in modules else None)
        return names

    marks = []

    class Timer(torch.fx.Interpreter):
        def run_node(self, node):
            if node.op not in computing:
                return super().run_node(node)
            start = _mark(cuda)
            out = super().run_node(node)
            marks.append((node.name, start, _mark(cuda)))
            return out

    timer = Timer(graph_module)
    totals, wall, runs = {}, 0.0, 0
    clock = _Clock(cuda)
    start = time.perf_counter()
    while runs < 1 or (runs < max_runs and time.perf_counter() - start < max_seconds):
        marks.clear()
        wall += clock(lambda: timer.run(*args))
        for name, t0, t1 in marks:
            totals[name] = totals.get(name, 0.0) + _elapsed(t0, t1, cuda)
        runs += 1
    names = {n.name: module_names(n) for n in graph_module.graph.nodes if n.op in computing}
    return {name: t / runs for name, t in totals.items()}, wall / runs, names


def _mark(cuda):
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed(t0, t1, cuda):
    return t0.elapsed_time(t1) / 1e3 if cuda else t1 - t0

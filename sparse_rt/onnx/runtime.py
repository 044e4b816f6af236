"""The op table's ops in onnxruntime: their weights validated and bound to a session, and their
kernels (sparse_rt's compiled ops) registered as onnxruntime-extensions Python ops."""

import logging
import math
import secrets
import threading
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from ..machine import memory_headroom
from ..ops import full_index_checks
from . import ort_extensions
from .ops_table import DOMAIN, INPUTS, OPS, OpSpec, require_compiled_ops

# --- weight validation and binding ---------------------------------------------------------------


def _graphs(graph):
    """`graph` and, recursively, the subgraphs of its If / Loop / Scan nodes (attributes of type
    GRAPH or GRAPHS), outer graphs first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from _graphs(subgraph)


def _scoped_nodes(graph, outer_constants=None):
    """(node, constants it can name) for every node of `graph` and its subgraphs: a subgraph sees
    the initializers and Constant outputs of the graphs around it."""
    constants = dict(outer_constants or {})
    constants.update({t.name: t for t in graph.initializer})
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" and not n.domain
                      for a in n.attribute if a.name == "value"})
    for node in graph.node:
        yield node, constants
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from _scoped_nodes(subgraph, constants)


def value_dims(model):
    """{value name: its dims (int, or None where symbolic or unknown), or None for an unknown
    rank} from ONNX shape inference over all graphs, or from the declared shapes where inference
    fails."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # the declared shapes then; what they leave unknown is checked at run time
        pass
    dims = {}
    for graph in _graphs(model.graph):
        for value in (*graph.input, *graph.value_info, *graph.output):
            tensor = value.type.tensor_type
            dims[value.name] = ([d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
                                if tensor.HasField("shape") else None)
    return dims


@dataclass
class CheckedNode:
    node: onnx.NodeProto  # a node of our domain, in the model's main graph or a subgraph
    what: str  # "PATH: node 'NAME' (OP)", for messages
    weights: list[torch.Tensor]  # crow, col, values, bias
    attributes: dict[str, int]  # the op's int attributes


def check_weights(model: onnx.ModelProto, path: str) -> list[CheckedNode]:
    """Raises ValueError naming the node and the problem unless every node of our domain (in the
    main graph and in If / Loop / Scan subgraphs) takes a valid fp32 sparse weight and bias from
    constants, within the CPU kernels' limits, and an X whose known dims fit them. Run before
    onnxruntime sees the model; dims the graph leaves unknown are checked before every kernel call."""
    from ..nn._sparse_weight import check_weight_and_bias

    dims = None
    checked = []
    for node, constants in _scoped_nodes(model.graph):
        if node.domain != DOMAIN:
            continue
        what = f"{path}: node {node.name!r} ({node.op_type})"
        if node.op_type not in OPS:
            raise ValueError(f"{what}: unknown op of domain {DOMAIN!r}")
        spec = OPS[node.op_type]
        if len(node.input) != len(INPUTS) or any(name not in constants for name in node.input[1:]):
            raise ValueError(f"{what}: crow_indices, col_indices, values and bias must be initializers")
        weights = [torch.from_numpy(onnx.numpy_helper.to_array(constants[name]).copy()) for name in node.input[1:]]
        attributes = {a.name: a.i for a in node.attribute if a.name in spec.attributes}
        try:
            missing = next((name for name in spec.attributes if name not in attributes), None)
            if missing:
                raise ValueError(f"attribute {missing!r} is missing")
            crow, col, values, bias = weights
            for name, tensor in zip(("values", "bias"), (values, bias)):
                if tensor.dtype != torch.float32:  # the kernels are registered with onnxruntime for fp32
                    raise ValueError(f"{name} is {tensor.dtype}, but onnxruntime runs our ops in float32 only")
            check_weight_and_bias(spec.weight(crow, col, values, attributes), bias, "")
            if dims is None:
                dims = value_dims(model)
            spec.check_input(dims.get(node.input[0]), attributes)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        checked.append(CheckedNode(node, what, weights, attributes))
    return checked


@dataclass
class _Binding:
    checked: CheckedNode
    session: str  # the binding session's token


_BOUND_WEIGHTS = {}  # key -> _Binding of a node of a live session
_BOUND_SUFFIX = "Bound"


def bind_weights(model: onnx.ModelProto, checked: list[CheckedNode]) -> tuple[str, list[str]]:
    """Moves the weights of our nodes out of `model` (in place) into bindings held here (from
    check_weights' result), each node becoming its "...Bound" twin that takes only X and names
    its binding by a string attribute. onnxruntime-extensions copies every input of a Python op
    on every call; bound weights are not inputs, so a call copies only the activation.

    The keys are 128-bit random tokens: the bound ops are registered process-wide (onnxruntime-
    extensions' hook is not told which session calls it), so any file run in this process could
    name one, and only a key it cannot guess keeps another session's weights out of its reach.
    Returns the session's token (for run_reporting_failures) and the keys (for release_weights
    when the session goes away)."""
    session = secrets.token_hex(16)
    keys = []
    for item in checked:
        key = f"{session}/{secrets.token_hex(16)}"
        _BOUND_WEIGHTS[key] = _Binding(item, session)
        keys.append(key)
        node = item.node
        del node.input[1:]
        node.op_type += _BOUND_SUFFIX
        node.attribute.append(onnx.helper.make_attribute("weights", key))
    used = {name for graph in _graphs(model.graph) for n in graph.node for name in n.input}
    for graph in _graphs(model.graph):
        for t in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(t)
        for n in [n for n in graph.node if n.op_type == "Constant" and not n.domain and n.output[0] not in used]:
            graph.node.remove(n)
    return session, keys


def release_weights(keys: list[str]) -> None:
    for key in keys:
        _BOUND_WEIGHTS.pop(key, None)


# --- kernel failures ------------------------------------------------------------------------------
# onnxruntime-extensions turns a Python exception from a Python op into a C++ exception that
# terminates the process (std::terminate: SIGABRT), and its kernel has no other way to fail.
# So our kernels never raise: a failure is recorded for the run that made the call, the run is
# stopped through its RunOptions.terminate (onnxruntime checks it before each further node) and the
# kernel returns an empty output; run_reporting_failures raises the failure once Run returns.


class _Run:
    def __init__(self, options):
        self.options, self.failure = options, None

    def fail(self, message, error):
        if self.failure is None:
            self.failure = message, error
        self.options.terminate = True


_this_thread = threading.local()  # .run: the _Run that this thread is in
_active_runs = {}  # session token -> set of its _Runs in progress (for kernels on onnxruntime's threads)
_active_runs_lock = threading.Lock()


def run_reporting_failures(run, arguments, run_options, session, ort):
    """run(*arguments, run_options) for a session whose bound weights have the token `session`;
    a failure inside one of our kernels in it is raised here (ValueError for an X the op cannot
    take, RuntimeError otherwise) instead of terminating the process."""
    options = run_options if run_options is not None else ort.RunOptions()
    state = _Run(options)
    outer, _this_thread.run = getattr(_this_thread, "run", None), state
    with _active_runs_lock:
        _active_runs.setdefault(session, set()).add(state)
    try:
        result = run(*arguments, options)
    except Exception:
        if state.failure is None:
            raise
        result = None
    finally:
        _this_thread.run = outer
        with _active_runs_lock:
            _active_runs[session].discard(state)
    if state.failure is not None:
        message, error = state.failure
        raise (ValueError if isinstance(error, ValueError) else RuntimeError)(message) from error
    return result


def _report_failure(message, error, binding):
    """Hands a kernel failure to the run it belongs to: this thread's, else (a kernel on one of
    onnxruntime's inter-op threads) every run in progress of the binding's session."""
    run = getattr(_this_thread, "run", None)
    if run is not None:
        runs = [run]
    else:
        with _active_runs_lock:
            runs = list(_active_runs.get(binding.session, ())) if binding is not None else []
    for run in runs:
        run.fail(message, error)
    if not runs:  # a session not built by sparse_rt.onnx.session: only the empty output tells
        logging.getLogger(__name__).error("%s (the kernel's output is empty)", message)


# --- onnxruntime kernels --------------------------------------------------------------------------

_ORT_TYPES = {"T": "float", "I": "int32"}  # INPUTS' type variables; fp32 only
_KERNELS = {}  # onnxruntime-extensions op id -> (OpSpec, kernel, bound)


def _kernel(spec: OpSpec):
    torch_op = getattr(torch.ops.sparse_rt, spec.torch_op)

    def run(x, crow, col, values, bias, a):
        spec.check_input(list(x.shape), a)  # X's dims the graph left unknown
        _check_output_fits(spec, list(x.shape), crow, values, a)
        return torch_op(x, crow, col, values, bias, *spec.torch_arguments(a))
    return run


# Bytes a kernel call needs per byte of its output once it returns: the output, and the copies
# onnxruntime-extensions and onnxruntime make of it (measured peak: ~4.9x with the conv kernel's
# transient scratch, which falls back to a path without scratch when memory is short).
_OUTPUT_COPIES = 4


def _check_output_fits(spec, x_dims, crow, values, a):
    """MemoryError unless the output and its copies on the way into onnxruntime fit in the memory
    this process can still allocate: onnxruntime-extensions terminates the process when its copy's
    allocation fails, so a too-large output must be refused before the kernel runs."""
    rows = spec.weight_rows(crow.numel(), values.shape[1] if spec.blocked and values.dim() == 3 else None)
    dims = spec.output_dims(x_dims, rows, a.__getitem__)
    if not all(isinstance(d, int) and d >= 0 for d in dims):
        return  # the kernel refuses this geometry itself
    need = _OUTPUT_COPIES * 4 * math.prod(dims)  # fp32
    headroom = memory_headroom()
    if headroom is not None and need > headroom:
        raise MemoryError(f"the output {dims} and its copies into onnxruntime need {need} bytes, more than the "
                          f"{headroom} this process can still allocate")


def _invoke(op_id, feed, attributes):
    """Our replacement of onnxruntime-extensions' Python-op hook: its stock hook returns outputs as
    Python lists (`.tolist()`), far too slow for activations. numpy arrays are accepted as well.
    Inputs arrive as numpy arrays that torch wraps without copying; the output tensor is handed
    back as a numpy view of the same memory. Ops that are not ours go to the stock hook. Nothing
    raises out of here: see "kernel failures" above."""
    entry = _KERNELS.get(op_id)
    binding = _BOUND_WEIGHTS.get(attributes.get("weights")) if entry is not None and entry[2] else None
    try:
        if entry is None:
            return ort_extensions.stock_invocation(op_id, feed, attributes)
        y = _compute(*entry, binding, feed, attributes)
    except BaseException as error:
        what = binding.checked.what if binding else (entry[0].name if entry else f"Python op {op_id}")
        _report_failure(f"{what}: {error}", error, binding)
        failed = _failed_output(feed)
        return op_id, failed.shape, failed
    y = y.numpy()
    return op_id, y.shape, y


def _failed_output(feed):
    """What a failed kernel returns while its run is being stopped: empty, of X's rank (every op of
    ours keeps the rank), because an output of another rank inside a Scan body makes onnxruntime
    size the scan's output from a negative shape and terminate the process."""
    rank = np.ndim(feed[0]) if feed else 1
    return np.zeros((0,) * max(rank, 1), np.float32)


def _compute(spec, kernel, bound, binding, feed, attributes):
    x = torch.from_numpy(np.ascontiguousarray(feed[0]))
    with torch.inference_mode():
        if bound:  # validated, and its attributes parsed, when bound
            if binding is None:
                raise RuntimeError(f"{spec.name}{_BOUND_SUFFIX}: no weights are bound under this key (the bound "
                                   f"ops are internal to the sparse_rt.onnx.session that bound them)")
            return kernel(x, *binding.checked.weights, binding.checked.attributes)
        # A session built around register_ort_kernels() directly gets the per-call check
        # (O(nnz), small next to the kernel).
        ints = {name: int(attributes[name]) for name in spec.attributes}
        with full_index_checks():
            return kernel(x, *(torch.from_numpy(np.ascontiguousarray(a)) for a in feed[1:]), ints)


def register_ort_kernels() -> str:
    """Registers our ops as onnxruntime-extensions Python ops (fp32), each with its "...Bound"
    twin (see bind_weights); idempotent. Returns the custom-op library path to pass to
    SessionOptions.register_custom_ops_library."""
    ort_extensions.load()
    require_compiled_ops()
    if not _KERNELS:
        input_types = [_ORT_TYPES[type_variable] for _, type_variable in INPUTS]
        for spec in OPS.values():
            kernel = _kernel(spec)
            int_attributes = {name: "int64" for name in spec.attributes}
            for bound in (False, True):
                op_id = ort_extensions.register_python_op(
                    f"{DOMAIN}::{spec.name}{_BOUND_SUFFIX if bound else ''}", kernel,
                    inputs=input_types[:1] if bound else input_types, outputs=[_ORT_TYPES["T"]],
                    attributes={**int_attributes, "weights": "string"} if bound else int_attributes)
                _KERNELS[op_id] = (spec, kernel, bound)
        ort_extensions.install_invocation_hook(_invoke)
    return ort_extensions.library_path()

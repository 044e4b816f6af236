"""The op table's ops in onnxruntime: their weights validated and bound to a session, and their
kernels (sparse_rt's compiled ops) registered as onnxruntime-extensions Python ops."""

import itertools

import numpy as np
import onnx
import torch

from ..ops import full_index_checks
from . import ort_extensions
from .ops_table import DOMAIN, INPUTS, OPS, OpSpec, require_compiled_ops

# --- weight validation and binding ---------------------------------------------------------------


def _constants(model):
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" and not n.domain
                      for a in n.attribute if a.name == "value"})
    return constants


def _weight_tensors(node, constants):
    return [torch.from_numpy(onnx.numpy_helper.to_array(constants[name]).copy()) for name in node.input[1:]]


def check_weights(model: onnx.ModelProto, path: str) -> dict[int, list[torch.Tensor]]:
    """Raises ValueError naming the node and the problem unless every node of our domain takes a
    valid sparse weight and bias from constants. Run before onnxruntime sees the model: an
    exception inside an onnxruntime-extensions Python op aborts the process, so a bad index array
    from the file must be refused here. Returns {index in graph.node: [crow, col, values, bias]}
    as tensors (node names need not be unique)."""
    from ..nn._sparse_weight import check_weight_and_bias

    constants = _constants(model)
    checked = {}
    for index, node in enumerate(model.graph.node):
        if node.domain != DOMAIN:
            continue
        what = f"{path}: node {node.name!r} ({node.op_type})"
        if node.op_type not in OPS:
            raise ValueError(f"{what}: unknown op of domain {DOMAIN!r}")
        if len(node.input) != len(INPUTS) or any(name not in constants for name in node.input[1:]):
            raise ValueError(f"{what}: crow_indices, col_indices, values and bias must be initializers")
        crow, col, values, bias = checked[index] = _weight_tensors(node, constants)
        try:
            weight = OPS[node.op_type].weight(crow, col, values, {a.name: a.i for a in node.attribute})
            check_weight_and_bias(weight, bias, "")
        except KeyError as e:
            raise ValueError(f"{what}: attribute {e} is missing") from None
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    return checked


_BOUND_WEIGHTS = {}  # key -> ([crow, col, values, bias], int attributes) of a node of a live session
_BOUND_SUFFIX = "Bound"
_bound_keys = itertools.count()


def bind_weights(model: onnx.ModelProto, weights: dict[int, list[torch.Tensor]]) -> list[str]:
    """Moves the weights of our nodes out of `model` (in place) into `weights` (check_weights'
    result) held here, each node becoming its "...Bound" twin that takes only X and names its
    weights by a string attribute. onnxruntime-extensions copies every input of a Python op on every call; bound
    weights are not inputs, so a call copies only the activation. Returns the keys, for
    release_weights when the session goes away."""
    keys = []
    for index, node in enumerate(model.graph.node):
        if node.domain != DOMAIN:
            continue
        key = f"{next(_bound_keys)}:{node.name}"
        names = OPS[node.op_type].attributes
        ints = {a.name: a.i for a in node.attribute if a.name in names}
        _BOUND_WEIGHTS[key] = (weights[index], ints)
        keys.append(key)
        del node.input[1:]
        node.op_type += _BOUND_SUFFIX
        node.attribute.append(onnx.helper.make_attribute("weights", key))
    used = {name for n in model.graph.node for name in n.input}
    for t in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(t)
    for n in [n for n in model.graph.node if n.op_type == "Constant" and not n.domain and n.output[0] not in used]:
        model.graph.node.remove(n)
    return keys


def release_weights(keys: list[str]) -> None:
    for key in keys:
        _BOUND_WEIGHTS.pop(key, None)


# --- onnxruntime kernels --------------------------------------------------------------------------

_ORT_TYPES = {"T": "float", "I": "int32"}  # INPUTS' type variables; fp32 only
_KERNELS = {}  # onnxruntime-extensions op id -> (kernel, attribute names, bound)


def _kernel(spec: OpSpec):
    torch_op = getattr(torch.ops.sparse_rt, spec.torch_op)

    def run(x, crow, col, values, bias, a):
        return torch_op(x, crow, col, values, bias, *spec.torch_arguments(a))
    return run


def _invoke(op_id, feed, attributes):
    """Our replacement of onnxruntime-extensions' Python-op hook: its stock hook returns outputs as
    Python lists (`.tolist()`), far too slow for activations. numpy arrays are accepted as well.
    Inputs arrive as numpy arrays that torch wraps without copying; the output tensor is handed
    back as a numpy view of the same memory. Ops that are not ours go to the stock hook."""
    entry = _KERNELS.get(op_id)
    if entry is None:
        return ort_extensions.stock_invocation(op_id, feed, attributes)
    kernel, names, bound = entry
    x = torch.from_numpy(np.ascontiguousarray(feed[0]))
    with torch.inference_mode():
        if bound:  # validated, and its attributes parsed, when bound
            weights, ints = _BOUND_WEIGHTS[attributes["weights"]]
            y = kernel(x, *weights, ints)
        else:
            # A session built around register_ort_kernels() directly gets the per-call check
            # (O(nnz), small next to the kernel).
            ints = {name: int(attributes[name]) for name in names}
            with full_index_checks():
                y = kernel(x, *(torch.from_numpy(np.ascontiguousarray(a)) for a in feed[1:]), ints)
    y = y.numpy()
    return op_id, y.shape, y


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
                _KERNELS[op_id] = (kernel, spec.attributes, bound)
        ort_extensions.install_invocation_hook(_invoke)
    return ort_extensions.library_path()

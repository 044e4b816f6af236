"""The "sparse" flavour's ONNX ops, in our own domain: one table (_OPS) drives their ONNX schemas
(with shape inference, so onnx.checker and onnx.shape_inference understand them), the onnxscript
translations torch.onnx.export uses for torch.ops.sparse_rt.*, and the onnxruntime kernels
(registered through onnxruntime-extensions, calling sparse_rt's compiled ops).

Every op takes (X, crow_indices, col_indices, values, bias) and integer attributes. All five
inputs are required (onnxruntime-extensions' Python ops have no optional inputs), so a layer
without bias gets a zero bias. Attributes are scalar ints because onnxruntime-extensions reads
no int lists.
"""

import itertools

import numpy as np
import onnx
import onnx.defs
import torch

from ..ops import full_index_checks

DOMAIN = "sparse_rt"
VERSION = 1

_CONV_ATTRS = ("in_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
               "dilation_h", "dilation_w", "group", "relu")
_LINEAR_ATTRS = ("in_features", "relu")

# op type -> (torch.ops.sparse_rt op it exports, attribute names, doc)
_OPS = {
    "CsrLinear": ("csr_linear", _LINEAR_ATTRS,
                  "Y = X @ W^T + bias (then ReLU if relu=1); W [len(crow)-1, in_features] in CSR."),
    "BsrLinear": ("bsr_linear", _LINEAR_ATTRS,
                  "Y = X @ W^T + bias (then ReLU if relu=1); W in BSR, values [nblocks, bh, bw]."),
    "CsrConv2d": ("csr_conv2d", _CONV_ATTRS,
                  "NCHW conv2d with symmetric zero padding; W in CSR over "
                  "[out_channels, in_channels/group*kernel_h*kernel_w] (row-major OIHW flattening)."),
}


# --- ONNX schemas and shape inference -------------------------------------------------------------

def _dim(type_proto, axis):
    d = type_proto.tensor_type.shape.dim[axis]
    return d.dim_value if d.HasField("dim_value") else None


def _set_output(ctx, dims, like):
    out = onnx.TypeProto()
    out.tensor_type.elem_type = like.tensor_type.elem_type
    for d in dims:
        new = out.tensor_type.shape.dim.add()
        if isinstance(d, int):
            new.dim_value = d
        elif d is not None:
            new.CopyFrom(d)  # a symbolic dimension passes through
    ctx.set_output_type(0, out)


def _rows(ctx):
    crow = _dim(ctx.get_input_type(1), 0)
    return None if crow is None else crow - 1


def _infer_linear(block_rows):
    def infer(ctx):
        x = ctx.get_input_type(0)
        if not x.tensor_type.HasField("shape"):
            return
        rows = _rows(ctx)
        if rows is not None and block_rows:
            bh = _dim(ctx.get_input_type(3), 1)
            rows = None if bh is None else rows * bh
        _set_output(ctx, [*x.tensor_type.shape.dim[:-1], rows], x)
    return infer


def _infer_conv(ctx):
    x = ctx.get_input_type(0)
    if not x.tensor_type.HasField("shape"):
        return
    attr = {name: ctx.get_attribute(name).i for name in _CONV_ATTRS}
    out_hw = []
    for axis, s in ((2, "h"), (3, "w")):
        size = _dim(x, axis)
        out_hw.append(None if size is None else
                      (size + 2 * attr[f"pad_{s}"] - attr[f"dilation_{s}"] * (attr[f"kernel_{s}"] - 1) - 1)
                      // attr[f"stride_{s}"] + 1)
    _set_output(ctx, [x.tensor_type.shape.dim[0], _rows(ctx), *out_hw], x)


def _schema(op_type, attrs, doc, infer):
    P = onnx.defs.OpSchema.FormalParameter
    schema = onnx.defs.OpSchema(
        op_type, DOMAIN, VERSION, doc,
        inputs=[P("X", "T"), P("crow_indices", "I"), P("col_indices", "I"), P("values", "T"), P("bias", "T")],
        outputs=[P("Y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "values and activations"),
                          ("I", ["tensor(int32)"], "indices")],
        attributes=[onnx.defs.OpSchema.Attribute(a, onnx.defs.OpSchema.AttrType.INT, a) for a in attrs])
    schema.set_type_and_shape_inference_function(infer)
    return schema


def register_schemas():
    """Registers our ops with onnx (checker, shape inference); idempotent."""
    infer = {"CsrLinear": _infer_linear(False), "BsrLinear": _infer_linear(True), "CsrConv2d": _infer_conv}
    for op_type, (_, attrs, doc) in _OPS.items():
        try:
            onnx.defs.get_schema(op_type, VERSION, DOMAIN)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(_schema(op_type, attrs, doc, infer[op_type]))


# --- torch.onnx translations ----------------------------------------------------------------------

def _require_compiled_ops():
    from ..ops import HAS_COMPILED_OPS

    if not HAS_COMPILED_OPS:
        # Without them the layers run pure-torch references, which trace to dense ops.
        raise RuntimeError("the 'sparse' ONNX flavour needs sparse_rt's compiled ops, which failed to "
                           "load; build them with: pip install --no-build-isolation -e .")


def _bias_or_zeros(bias, rows, values):
    if bias is not None:
        return bias
    from onnxscript import opset18 as op

    zeros = np.zeros(rows, dtype=values.dtype.numpy())
    return op.Constant(value=onnx.numpy_helper.from_array(zeros))


def translation_table():
    """{torch op: onnxscript function} for torch.onnx.export(custom_translation_table=...)."""
    import onnxscript

    _require_compiled_ops()
    register_schemas()  # onnxscript looks the ops up in onnx's schema registry
    ours = onnxscript.values.Opset(DOMAIN, VERSION)

    def csr_linear(input, crow, col, values, bias=None, in_features=0, relu=False):
        bias = _bias_or_zeros(bias, crow.shape[0] - 1, values)
        return ours.CsrLinear(input, crow, col, values, bias, in_features=in_features, relu=int(relu))

    def bsr_linear(input, crow, col, values, bias=None, in_features=0, relu=False):
        bias = _bias_or_zeros(bias, (crow.shape[0] - 1) * values.shape[1], values)
        return ours.BsrLinear(input, crow, col, values, bias, in_features=in_features, relu=int(relu))

    def csr_conv2d(input, crow, col, values, bias, in_channels, kernel_size, stride, padding, dilation,
                   groups, relu=False):
        bias = _bias_or_zeros(bias, crow.shape[0] - 1, values)
        return ours.CsrConv2d(
            input, crow, col, values, bias, in_channels=in_channels,
            kernel_h=kernel_size[0], kernel_w=kernel_size[1], stride_h=stride[0], stride_w=stride[1],
            pad_h=padding[0], pad_w=padding[1], dilation_h=dilation[0], dilation_w=dilation[1],
            group=groups, relu=int(relu))

    functions = {"CsrLinear": csr_linear, "BsrLinear": bsr_linear, "CsrConv2d": csr_conv2d}
    return {getattr(torch.ops.sparse_rt, torch_op).default: functions[op_type]
            for op_type, (torch_op, _, _) in _OPS.items()}


# --- weight validation and binding ---------------------------------------------------------------

def _constants(model):
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" and not n.domain
                      for a in n.attribute if a.name == "value"})
    return constants


def _weight_tensors(node, constants):
    return [torch.from_numpy(onnx.numpy_helper.to_array(constants[name]).copy()) for name in node.input[1:]]


def check_weights(model, path):
    """Raises ValueError naming the node and the problem unless every node of our domain takes a
    valid sparse weight and bias from constants. Run before onnxruntime sees the model: an
    exception inside an onnxruntime-extensions Python op aborts the process, so a bad index array
    from the file must be refused here. Returns {index in graph.node: [crow, col, values, bias]}
    as tensors (node names need not be unique)."""
    from ..formats import BSR, CSR
    from ..nn._sparse_weight import check_weight_and_bias
    from ..nn.conv import check_conv_geometry

    constants = _constants(model)
    checked = {}
    for index, node in enumerate(model.graph.node):
        if node.domain != DOMAIN:
            continue
        what = f"{path}: node {node.name!r} ({node.op_type})"
        if node.op_type not in _OPS:
            raise ValueError(f"{what}: unknown op of domain {DOMAIN!r}")
        if len(node.input) != 5 or any(name not in constants for name in node.input[1:]):
            raise ValueError(f"{what}: crow_indices, col_indices, values and bias must be initializers")
        crow, col, values, bias = checked[index] = _weight_tensors(node, constants)
        a = {attr.name: attr.i for attr in node.attribute}
        try:
            if node.op_type == "CsrConv2d":
                check_conv_geometry(a["in_channels"], crow.numel() - 1, (a["kernel_h"], a["kernel_w"]),
                                    (a["stride_h"], a["stride_w"]), (a["pad_h"], a["pad_w"]),
                                    (a["dilation_h"], a["dilation_w"]), a["group"])
                cols = a["in_channels"] // a["group"] * a["kernel_h"] * a["kernel_w"]
                weight = CSR(crow, col, values, (crow.numel() - 1, cols))
            elif node.op_type == "CsrLinear":
                weight = CSR(crow, col, values, (crow.numel() - 1, a["in_features"]))
            else:
                if values.dim() != 3:
                    raise ValueError(f"values must be 3-D [nblocks, bh, bw], got shape {tuple(values.shape)}")
                bh, bw = values.shape[1:]
                weight = BSR(crow, col, values, ((crow.numel() - 1) * bh, a["in_features"]), (bh, bw))
            check_weight_and_bias(weight, bias, "")
        except KeyError as e:
            raise ValueError(f"{what}: attribute {e} is missing") from None
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    return checked


_BOUND_WEIGHTS = {}  # key -> ([crow, col, values, bias], int attributes) of a node of a live session
_BOUND_SUFFIX = "Bound"
_bound_keys = itertools.count()


def bind_weights(model, weights):
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
        _, names, _ = _OPS[node.op_type]
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


def release_weights(keys):
    for key in keys:
        _BOUND_WEIGHTS.pop(key, None)


# --- onnxruntime kernels --------------------------------------------------------------------------

def _linear_kernel(torch_op):
    def run(x, crow, col, values, bias, a):
        return torch_op(x, crow, col, values, bias, a["in_features"], bool(a["relu"]))
    return run


def _conv_kernel(x, crow, col, values, bias, a):
    return torch.ops.sparse_rt.csr_conv2d(
        x, crow, col, values, bias, a["in_channels"], [a["kernel_h"], a["kernel_w"]],
        [a["stride_h"], a["stride_w"]], [a["pad_h"], a["pad_w"]], [a["dilation_h"], a["dilation_w"]],
        a["group"], bool(a["relu"]))


_KERNELS = {}  # onnxruntime-extensions op id -> (kernel, attribute names, bound)


def _invoke(op_id, feed, attributes):
    """Our replacement of onnxruntime-extensions' Python-op hook: its stock hook returns outputs as
    Python lists (`.tolist()`), far too slow for activations. numpy arrays are accepted as well.
    Inputs arrive as numpy arrays that torch wraps without copying; the output tensor is handed
    back as a numpy view of the same memory. Ops that are not ours go to the stock hook."""
    entry = _KERNELS.get(op_id)
    if entry is None:
        from onnxruntime_extensions import _ocos

        return _ocos._on_pyop_invocation(op_id, feed, attributes)
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


def register_ort_kernels():
    """Registers our ops as onnxruntime-extensions Python ops (fp32), each with its "...Bound"
    twin (see bind_weights); idempotent. Returns the custom-op library path to pass to
    SessionOptions.register_custom_ops_library."""
    try:
        import onnxruntime_extensions as ortx
        from onnxruntime_extensions import PyCustomOpDef
    except ImportError as e:
        raise ImportError("running the 'sparse' ONNX flavour in onnxruntime needs onnxruntime-extensions "
                          f"(pip install onnxruntime-extensions): {e}") from None
    _require_compiled_ops()
    if not _KERNELS:
        kernels = {"CsrLinear": _linear_kernel(torch.ops.sparse_rt.csr_linear),
                   "BsrLinear": _linear_kernel(torch.ops.sparse_rt.bsr_linear),
                   "CsrConv2d": _conv_kernel}
        f32, i32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32
        for op_type, (_, attrs, _) in _OPS.items():
            int_attrs = {a: PyCustomOpDef.dt_int64 for a in attrs}
            for bound in (False, True):
                opdef = ortx.onnx_op(
                    op_type=f"{DOMAIN}::{op_type}{_BOUND_SUFFIX if bound else ''}",
                    inputs=[f32] if bound else [f32, i32, i32, f32, f32], outputs=[f32],
                    attrs={**int_attrs, "weights": PyCustomOpDef.dt_string} if bound else int_attrs,
                )(kernels[op_type])
                _KERNELS[opdef._nativedef.obj_id] = (kernels[op_type], attrs, bound)
        PyCustomOpDef.install_hooker(_invoke)
    return ortx.get_library_path()

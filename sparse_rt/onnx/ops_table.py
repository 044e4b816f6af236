"""The "sparse" flavour's ONNX ops, in our own domain: everything particular to one op stands in
its OpSpec below; schemas.py, translation.py and runtime.py derive the ONNX schemas, the
torch.onnx translations and the onnxruntime kernels from this table.

Every op takes INPUTS (X, crow_indices, col_indices, values, bias) and gives Y. All five inputs
are required (onnxruntime-extensions' Python ops have no optional inputs), so a layer without bias
gets a zero bias, and a torch op's residual (sparse_rt.fusion) is exported as a standard Add after
our op (and the ReLU, if fused, as a Relu after that). Every attribute is a scalar int:
onnxruntime-extensions reads no int lists.
"""

from collections.abc import Callable
from dataclasses import dataclass

from ..ops.geometry import conv2d_output_size

DOMAIN = "sparse_rt"
VERSION = 1
# The CPU kernel's limit on BSR block height (its on-stack accumulator; csrc/kernels/cpu/bsr_linear.h
# kMaxBlockHeight): onnxruntime runs our ops on the CPU kernels only.
MAX_BLOCK_HEIGHT = 64

# (name, type variable): "T" values and activations, "I" indices
INPUTS = (("X", "T"), ("crow_indices", "I"), ("col_indices", "I"), ("values", "T"), ("bias", "T"))


@dataclass(frozen=True)
class OpSpec:
    name: str  # the op type in DOMAIN
    torch_op: str  # the torch.ops.sparse_rt op it exports and runs
    attributes: tuple[str, ...]  # names of its (int) attributes
    doc: str
    # Values are [nblocks, bh, bw] blocks: the weight has (len(crow_indices) - 1) * bh rows.
    blocked: bool
    # NCHW output, so a BatchNormalization after it scales its rows (fold.py).
    folds_batchnorm: bool
    # (X's dims, the weight's rows, attribute(name) -> int) -> Y's dims; a dim is an int, or
    # something else that is unknown here (a symbolic dim passes through as it is).
    output_dims: Callable
    # emit(X, crow, col, values, bias, residual, **attributes) -> the translation of the torch op: a
    # function with the torch op's parameters (the exporter matches arguments to them by name).
    translation: Callable
    # attributes -> the torch op's arguments after (X, crow, col, values, bias)
    torch_arguments: Callable
    # (crow, col, values, attributes) -> the CSR / BSR weight, its geometry checked (ValueError)
    weight: Callable
    # (X's dims, attributes) -> None; ValueError unless the op takes an X of those dims (a dim
    # that is not an int is unknown and passes; None for an unknown rank). Checked against the
    # graph's shapes when a session is built and against X itself before every kernel call.
    check_input: Callable

    def weight_rows(self, crow_length: int | None, block_height: int | None) -> int | None:
        """Rows of the dense weight (the output features or channels); None where a length it
        needs is (block_height counts for a blocked op only)."""
        if crow_length is None or (self.blocked and block_height is None):
            return None
        return (crow_length - 1) * (block_height if self.blocked else 1)


_LINEAR_ATTRIBUTES = ("in_features", "relu")
_CONV_ATTRIBUTES = ("in_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
                    "dilation_h", "dilation_w", "group", "relu")


def _linear_output_dims(x, rows, attribute):
    return [*x[:-1], rows]


def _check_linear_input(x, a):
    if x is None:
        return
    if not x:
        raise ValueError(f"X must have at least one dimension (in_features={a['in_features']}), got a scalar")
    if isinstance(x[-1], int) and x[-1] != a["in_features"]:
        raise ValueError(f"X has shape {_dims(x)} but in_features={a['in_features']}")


def _dims(x):
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in x) + "]"


def _linear_translation(emit):
    # `packed` (csr_linear's packing) is the CPU ops' runtime layout; layers pass None when exported.
    def translation(input, crow, col, values, bias=None, in_features=0, relu=False, residual=None, packed=None):
        return emit(input, crow, col, values, bias, residual, in_features=in_features, relu=int(relu))
    return translation


def _linear_torch_arguments(a):
    return a["in_features"], bool(a["relu"])


def _csr_linear_weight(crow, col, values, a):
    from ..formats import CSR

    return CSR(crow, col, values, (crow.numel() - 1, a["in_features"]))


def _bsr_linear_weight(crow, col, values, a):
    from ..formats import BSR

    if values.dim() != 3:
        raise ValueError(f"values must be 3-D [nblocks, bh, bw], got shape {tuple(values.shape)}")
    bh, bw = values.shape[1:]
    if bh > MAX_BLOCK_HEIGHT:
        raise ValueError(f"block height {bh} exceeds the CPU kernel's maximum {MAX_BLOCK_HEIGHT}")
    return BSR(crow, col, values, ((crow.numel() - 1) * bh, a["in_features"]), (bh, bw))


def _conv_output_dims(x, rows, attribute):
    def size(axis, s):
        if not isinstance(x[axis], int):
            return None
        return conv2d_output_size(x[axis], attribute(f"kernel_{s}"), attribute(f"stride_{s}"), attribute(f"pad_{s}"),
                                  attribute(f"dilation_{s}"))
    return [x[0], rows, size(2, "h"), size(3, "w")]


def _check_conv_input(x, a):
    if x is None:
        return
    if len(x) != 4:
        raise ValueError(f"X must be 4-D [N, C, H, W], got shape {_dims(x)}")
    if isinstance(x[1], int) and x[1] != a["in_channels"]:
        raise ValueError(f"X has shape {_dims(x)} but in_channels={a['in_channels']}")
    out = _conv_output_dims(x, None, a.__getitem__)[2:]
    if any(isinstance(d, int) and d < 1 for d in out):
        raise ValueError(f"X has shape {_dims(x)}, smaller than the dilated kernel "
                         f"{a['kernel_h']}x{a['kernel_w']} (padding {a['pad_h']}x{a['pad_w']}, dilation "
                         f"{a['dilation_h']}x{a['dilation_w']}): the output would be {_dims(out)}")


def _conv_translation(emit):
    # `packed`, as for the linear ops, is a runtime layout that layers pass as None when exported.
    def translation(input, crow, col, values, bias, in_channels, kernel_size, stride, padding, dilation,
                    groups, relu=False, residual=None, packed=None):
        return emit(input, crow, col, values, bias, residual, in_channels=in_channels,
                    kernel_h=kernel_size[0], kernel_w=kernel_size[1], stride_h=stride[0], stride_w=stride[1],
                    pad_h=padding[0], pad_w=padding[1], dilation_h=dilation[0], dilation_w=dilation[1],
                    group=groups, relu=int(relu))
    return translation


def _conv_geometry(a):
    """(in_channels, kernel_size, stride, padding, dilation, groups) as SparseConv2d takes them."""
    return (a["in_channels"], (a["kernel_h"], a["kernel_w"]), (a["stride_h"], a["stride_w"]),
            (a["pad_h"], a["pad_w"]), (a["dilation_h"], a["dilation_w"]), a["group"])


def _conv_torch_arguments(a):
    return *_conv_geometry(a), bool(a["relu"])


def _conv_weight(crow, col, values, a):
    from ..formats import CSR
    from ..nn.conv import check_conv_geometry

    in_channels, kernel_size, stride, padding, dilation, groups = _conv_geometry(a)
    rows = crow.numel() - 1
    check_conv_geometry(in_channels, rows, kernel_size, stride, padding, dilation, groups)
    return CSR(crow, col, values, (rows, in_channels // groups * kernel_size[0] * kernel_size[1]))


OPS = {spec.name: spec for spec in (
    OpSpec("CsrLinear", "csr_linear", _LINEAR_ATTRIBUTES,
           "Y = X @ W^T + bias (then ReLU if relu=1); W [len(crow)-1, in_features] in CSR.",
           blocked=False, folds_batchnorm=False, output_dims=_linear_output_dims,
           translation=_linear_translation, torch_arguments=_linear_torch_arguments, weight=_csr_linear_weight,
           check_input=_check_linear_input),
    OpSpec("BsrLinear", "bsr_linear", _LINEAR_ATTRIBUTES,
           "Y = X @ W^T + bias (then ReLU if relu=1); W in BSR, values [nblocks, bh, bw].",
           blocked=True, folds_batchnorm=False, output_dims=_linear_output_dims,
           translation=_linear_translation, torch_arguments=_linear_torch_arguments, weight=_bsr_linear_weight,
           check_input=_check_linear_input),
    OpSpec("CsrConv2d", "csr_conv2d", _CONV_ATTRIBUTES,
           "NCHW conv2d with symmetric zero padding; W in CSR over "
           "[out_channels, in_channels/group*kernel_h*kernel_w] (row-major OIHW flattening).",
           blocked=False, folds_batchnorm=True, output_dims=_conv_output_dims,
           translation=_conv_translation, torch_arguments=_conv_torch_arguments, weight=_conv_weight,
           check_input=_check_conv_input),
)}


def require_compiled_ops() -> None:
    """Raises RuntimeError unless torch.ops.sparse_rt (the ops of the table) is loaded."""
    from ..ops import HAS_COMPILED_OPS

    if not HAS_COMPILED_OPS:
        # Without them the layers run pure-torch references, which trace to dense ops.
        raise RuntimeError("the 'sparse' ONNX flavour needs sparse_rt's compiled ops, which failed to "
                           "load; build them with: pip install --no-build-isolation -e .")

"""torch.onnx translations of torch.ops.sparse_rt.* into the op table's ONNX ops."""

from collections.abc import Callable

import numpy as np
import onnx
import torch

from .ops_table import DOMAIN, OPS, VERSION, OpSpec, require_compiled_ops
from .schemas import register_schemas


def _emitter(spec: OpSpec, onnx_op):
    def emit(input, crow, col, values, bias, residual, **attributes):
        from onnxscript import opset18 as op

        if bias is None:
            block_height = values.shape[1] if spec.blocked else None
            zeros = np.zeros(spec.weight_rows(crow.shape[0], block_height), dtype=values.dtype.numpy())
            bias = op.Constant(value=onnx.numpy_helper.from_array(zeros))
        if residual is None:
            return onnx_op(input, crow, col, values, bias, **attributes)
        # The ops have no residual input: the sum and the ReLU after it are standard ops.
        relu = attributes.pop("relu")
        y = op.Add(onnx_op(input, crow, col, values, bias, relu=0, **attributes), residual)
        return op.Relu(y) if relu else y
    return emit


def translation_table() -> dict[object, Callable]:
    """{torch op: onnxscript function} for torch.onnx.export(custom_translation_table=...)."""
    import onnxscript

    require_compiled_ops()
    register_schemas()  # onnxscript looks the ops up in onnx's schema registry
    ours = onnxscript.values.Opset(DOMAIN, VERSION)
    return {getattr(torch.ops.sparse_rt, spec.torch_op).default:
            spec.translation(_emitter(spec, getattr(ours, spec.name)))
            for spec in OPS.values()}

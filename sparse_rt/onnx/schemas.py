"""ONNX schemas of the op table's ops, with shape inference, so that onnx.checker,
onnx.shape_inference and onnxscript understand them."""

import onnx
import onnx.defs

from .ops_table import DOMAIN, INPUTS, OPS, VERSION, OpSpec

_TYPE_CONSTRAINTS = [("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "values and activations"),
                     ("I", ["tensor(int32)"], "indices")]


def _dim(type_proto, axis):
    d = type_proto.tensor_type.shape.dim[axis]
    return d.dim_value if d.HasField("dim_value") else None


def _known_or_as_is(dims):
    return [d.dim_value if d.HasField("dim_value") else d for d in dims]


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


def _shape_inference(spec: OpSpec):
    def infer(ctx):
        x = ctx.get_input_type(0)
        if not x.tensor_type.HasField("shape"):
            return
        crow_length = _dim(ctx.get_input_type(1), 0)
        # values' dims are read only where they count
        block_height = _dim(ctx.get_input_type(3), 1) if spec.blocked and crow_length is not None else None
        rows = spec.weight_rows(crow_length, block_height)
        dims = spec.output_dims(_known_or_as_is(x.tensor_type.shape.dim), rows,
                                lambda name: ctx.get_attribute(name).i)
        _set_output(ctx, dims, x)
    return infer


def _schema(spec: OpSpec):
    P = onnx.defs.OpSchema.FormalParameter
    schema = onnx.defs.OpSchema(
        spec.name, DOMAIN, VERSION, spec.doc,
        inputs=[P(name, type_variable) for name, type_variable in INPUTS],
        outputs=[P("Y", "T")],
        type_constraints=_TYPE_CONSTRAINTS,
        attributes=[onnx.defs.OpSchema.Attribute(a, onnx.defs.OpSchema.AttrType.INT, a) for a in spec.attributes])
    schema.set_type_and_shape_inference_function(_shape_inference(spec))
    return schema


def register_schemas() -> None:
    """Registers our ops with onnx (checker, shape inference); idempotent."""
    for spec in OPS.values():
        try:
            onnx.defs.get_schema(spec.name, VERSION, DOMAIN)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(_schema(spec))

"""ONNX export in two flavours and onnxruntime sessions that run them.

    sparse_rt.onnx.export(model, "m.onnx", x, flavor="portable")   # standard ops, stock onnxruntime
    sparse_rt.onnx.export(model, "m.onnx", x, flavor="sparse")     # our ops, sparse compute
    sess = sparse_rt.onnx.session("m.onnx")                        # onnxruntime + our ops

Needs onnx and onnxscript (export) and onnxruntime at run time; the sparse flavour runs on the
onnxruntime kernels built into sparse_rt._C (csrc/onnxruntime), or where those were not built, on
Python ops through onnxruntime-extensions.
"""

from .export import FLAVORS, ExportResult, ModelNotExportableError, compare, export
from .ops_table import DOMAIN
from .schemas import register_schemas
from .session import session

register_schemas()  # so onnx.checker / shape inference in this process know our ops

__all__ = ["export", "session", "compare", "ExportResult", "ModelNotExportableError", "FLAVORS", "DOMAIN",
           "register_schemas"]

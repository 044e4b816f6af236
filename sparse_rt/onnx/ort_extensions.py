"""The one adapter over onnxruntime-extensions: every import of it and every use of its internals
(the Python-op ids and the invocation hook, beyond its public onnx_op) stands here. Those
internals change without notice, so load() accepts only the versions they were tested with."""

import re
import types
from collections.abc import Callable

# [from, to): the (major, minor) versions whose Python-op internals match what this module uses
TESTED_VERSIONS = ((0, 15), (0, 16))


def _tested_range():
    (from_major, from_minor), (to_major, to_minor) = TESTED_VERSIONS
    return f">={from_major}.{from_minor},<{to_major}.{to_minor}"


def load() -> types.ModuleType:
    """onnxruntime_extensions, imported and its version checked; ImportError (naming the
    installed version) where it is missing or untested."""
    try:
        import onnxruntime_extensions as ortx
    except ImportError as e:
        raise ImportError("running the 'sparse' ONNX flavour in onnxruntime needs onnxruntime-extensions "
                          f"(pip install onnxruntime-extensions): {e}") from None
    major_minor = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", ortx.__version__).groups())
    if not TESTED_VERSIONS[0] <= major_minor < TESTED_VERSIONS[1]:
        raise ImportError(f"onnxruntime-extensions {ortx.__version__} is installed, but sparse_rt's 'sparse' ONNX "
                          f"flavour uses internals of it tested with versions {_tested_range()} only "
                          f"(pip install 'onnxruntime-extensions{_tested_range()}')")
    return ortx


def register_python_op(op_type: str, function: Callable, *, inputs: list[str], outputs: list[str],
                       attributes: dict[str, str]) -> int:
    """Registers a Python op ("domain::Type"); types are "float", "int32", "int64" or "string".
    Returns its id, which the invocation hook receives."""
    ortx = load()
    dtype = {name: getattr(ortx.PyCustomOpDef, f"dt_{name}") for name in ("float", "int32", "int64", "string")}
    opdef = ortx.onnx_op(op_type=op_type, inputs=[dtype[t] for t in inputs], outputs=[dtype[t] for t in outputs],
                         attrs={name: dtype[t] for name, t in attributes.items()})(function)
    return opdef._nativedef.obj_id


def install_invocation_hook(hook: Callable) -> None:
    """Routes every Python-op call to hook(op id, inputs, attributes) -> (op id, shape, numpy array)."""
    load().PyCustomOpDef.install_hooker(hook)


def stock_invocation(op_id: int, inputs: list, attributes: dict) -> tuple:
    """What onnxruntime-extensions' own hook does with a call (for the ops that are not ours)."""
    from onnxruntime_extensions import _ocos

    return _ocos._on_pyop_invocation(op_id, inputs, attributes)


def library_path() -> str:
    """The custom-op library for SessionOptions.register_custom_ops_library."""
    return load().get_library_path()

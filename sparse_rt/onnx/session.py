"""onnxruntime sessions for exported models, with sparse_rt's ops registered."""

import os

_SESSION_ARGS = ("providers", "provider_options")


def session(path, *, register_ops=True, config=None, **ort_options):
    """An onnxruntime.InferenceSession for the ONNX file at `path`.

    With `register_ops` (default), sparse_rt's ops (domain "sparse_rt") are registered through
    onnxruntime-extensions and run on sparse_rt's compiled CPU kernels; a portable-flavour file
    needs nothing (register_ops=False gives a stock session). `ort_options` set attributes of
    onnxruntime.SessionOptions (intra_op_num_threads=2, graph_optimization_level=...) or pass
    `providers` / `provider_options` on; `config` holds session config entries
    ({"session.intra_op.allow_spinning": "0"}). With `register_ops`, the sparse weights in the
    file are validated first (ValueError naming the node).
    """
    import onnxruntime as ort

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    session_args = {k: ort_options.pop(k) for k in _SESSION_ARGS if k in ort_options}
    for name, value in ort_options.items():
        if not hasattr(options, name):
            raise TypeError(f"session: {name!r} is neither an onnxruntime.SessionOptions attribute nor "
                            f"one of {_SESSION_ARGS}")
        setattr(options, name, value)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, str(value))
    if register_ops:
        import onnx

        from .sparse_ops import check_weights, register_ort_kernels

        check_weights(onnx.load(path), path)
        options.register_custom_ops_library(register_ort_kernels())
    session_args.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(path, options, **session_args)

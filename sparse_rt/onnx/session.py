"""onnxruntime sessions for exported models, with sparse_rt's ops registered."""

import functools
import os
import weakref

_SESSION_ARGS = ("providers", "provider_options")
_MAX_PROTO_BYTES = 2**31 - 1


KERNELS = ("auto", "native", "python")


def session(path, *, register_ops=True, kernels="auto", config=None, **ort_options):
    """An onnxruntime.InferenceSession for the ONNX file at `path`.

    With `register_ops` (default), sparse_rt's ops (domain "sparse_rt") are registered and run on
    sparse_rt's CPU kernels; a portable-flavour file needs nothing (register_ops=False gives a stock
    session). `kernels` says how: "native" — the kernels built into sparse_rt._C as an onnxruntime
    custom-op library (csrc/onnxruntime), on onnxruntime's own threads, the weights read in place;
    "python" — onnxruntime-extensions Python ops calling torch.ops.sparse_rt on torch's threads;
    "auto" (default) — native where it was built in (build_info()["onnxruntime_kernels"]).
    Either way the sparse weights in the file are validated first (ValueError naming the node). A
    native kernel reports an X it cannot take as onnxruntime's InvalidArgument, naming the node.
    On the native kernels a residual Add after our op, and a Relu after it, run in the op's
    epilogue (fold.fold_residual_add_and_relu), as does a Gelu after a linear op (fold.fold_gelu),
    CsrLinear nodes reading one input run as one (fold.group_linears_sharing_input), and attention
    written out in standard ops runs as our ScaledDotProductAttention (fold.fold_attention), and
    two CsrLinear nodes in a row run as one CsrMlp (fold.fuse_feed_forward), and a ResNet bottleneck
    block's three CsrConv2d nodes as one CsrBottleneck (fold.fuse_bottleneck_blocks), with the pointwise
    downsample that makes its residual from its input as its shortcut (fold.fuse_block_shortcuts); the
    file is not changed.
    `ort_options` set attributes of onnxruntime.SessionOptions (intra_op_num_threads=2,
    graph_optimization_level=...) or pass `providers` / `provider_options` on; `config` holds
    session config entries ({"session.intra_op.allow_spinning": "0"}). The Python ops' weights are
    bound to the session (runtime.bind_weights): a call of our op then copies its activation only.
    """
    import onnxruntime as ort

    from ..ops import onnxruntime_kernels_library

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ONNX file at {path}")
    if kernels not in KERNELS:
        raise ValueError(f"session: kernels must be one of {KERNELS}, got {kernels!r}")
    native_library = onnxruntime_kernels_library()
    if kernels == "native" and native_library is None:
        raise RuntimeError("session: sparse_rt was built without its onnxruntime kernels (onnxruntime's headers "
                           "were not found: `make install` fetches them; see tools/onnxruntime_headers.py)")
    native = register_ops and kernels != "python" and native_library is not None
    options = ort.SessionOptions()
    session_args = {k: ort_options.pop(k) for k in _SESSION_ARGS if k in ort_options}
    for name, value in ort_options.items():
        if not hasattr(options, name):
            raise TypeError(f"session: {name!r} is neither an onnxruntime.SessionOptions attribute nor "
                            f"one of {_SESSION_ARGS}")
        setattr(options, name, value)
    config = dict(config or {})
    if register_ops and not native:
        # The Python ops' kernels run on torch's OpenMP threads: onnxruntime's own workers spinning
        # between nodes would take the cores those kernels need.
        config.setdefault("session.intra_op.allow_spinning", "0")
    for key, value in config.items():
        options.add_session_config_entry(key, str(value))
    session_args.setdefault("providers", ["CPUExecutionProvider"])
    if not register_ops:
        return ort.InferenceSession(path, options, **session_args)
    import onnx

    from .fold import (
        fold_attention,
        fold_gelu,
        fold_residual_add_and_relu,
        fuse_block_shortcuts,
        fuse_bottleneck_blocks,
        fuse_feed_forward,
        group_linears_sharing_input,
    )
    from .runtime import bind_weights, check_weights, register_ort_kernels, release_weights, value_dims

    model = onnx.load(path)
    checked = check_weights(model, path)
    if native:
        options.register_custom_ops_library(native_library)
        # Residual adds, ReLUs and GELUs go into our ops' epilogues, CsrLinear nodes reading one
        # input become one CsrLinears, attention one node, two linear layers in a row one CsrMlp
        # and a bottleneck block's convolutions one CsrBottleneck, where the graph travels as
        # bytes, within protobuf's limit; past it the file runs as it is.
        if model.ByteSize() <= _MAX_PROTO_BYTES:
            dims = value_dims(model)  # of values that the rewrites keep as they are
            folded = fold_residual_add_and_relu(model, dims)
            folded += fuse_bottleneck_blocks(model, dims)  # after the residual reaches the block's last layer
            folded += fuse_block_shortcuts(model)
            folded += fold_gelu(model)
            folded += fold_attention(model, dims)
            folded += fuse_feed_forward(model)
            folded += group_linears_sharing_input(model)
            if folded:
                return ort.InferenceSession(model.SerializeToString(), options, **session_args)
        return ort.InferenceSession(path, options, **session_args)
    options.register_custom_ops_library(register_ort_kernels())
    token, keys = bind_weights(model, checked)
    session_class = _reporting_session_class(ort)
    if model.ByteSize() > _MAX_PROTO_BYTES:
        # The rewritten graph travels as bytes, within protobuf's limit; past it the file runs as
        # it is (its weights then copied on every call).
        release_weights(keys)
        return session_class(token, path, options, **session_args)
    try:
        sess = session_class(token, model.SerializeToString(), options, **session_args)
    except BaseException:
        release_weights(keys)
        raise
    weakref.finalize(sess, release_weights, keys)
    return sess


@functools.cache
def _reporting_session_class(ort):
    """An onnxruntime.InferenceSession whose run, run_with_ort_values and run_with_iobinding go
    through runtime.run_reporting_failures: a failing kernel of ours fails the call with an
    exception (one raised inside the op would make onnxruntime-extensions terminate the process)."""
    from .runtime import run_reporting_failures

    class ReportingSession(ort.InferenceSession):
        def __init__(self, token, *args, **kwargs):
            self._sparse_rt_token = token  # the bound weights' session token
            super().__init__(*args, **kwargs)

        def _reporting(self, method, args, run_options):
            return run_reporting_failures(functools.partial(method, self), args, run_options,
                                          self._sparse_rt_token, ort)

        def run(self, output_names, input_feed, run_options=None):
            return self._reporting(ort.InferenceSession.run, (output_names, input_feed), run_options)

        def run_with_ort_values(self, output_names, input_dict_ort_values, run_options=None):
            return self._reporting(ort.InferenceSession.run_with_ort_values, (output_names, input_dict_ort_values),
                                   run_options)

        def run_with_iobinding(self, iobinding, run_options=None):
            return self._reporting(ort.InferenceSession.run_with_iobinding, (iobinding,), run_options)

        def run_async(self, *args, **kwargs):
            raise NotImplementedError("sparse_rt.onnx.session: run_async is not supported (its nodes run on "
                                      "onnxruntime's threads, where a failing kernel's error cannot reach the "
                                      "caller); call run from a thread of your own")

    return ReportingSession

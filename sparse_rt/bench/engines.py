"""The engines a benchmark compares: sparse_rt itself and its baselines, each a callable x -> y.

dense               the same model with every sparse layer turned back into nn.Linear / nn.Conv2d
torch-sparse        the dense model with the layers sparse_rt runs sparse holding torch.sparse CSR
                    weights (torch.sparse.mm; convolutions as unfold + sparse mm)
onnxruntime         the dense model exported to ONNX (torch.onnx.export, dynamo) in stock onnxruntime
onnxruntime-sparse  sparse_rt's own ONNX sparse flavour (our ops, BN and ReLU folded into the
                    sparse convs) in onnxruntime through sparse_rt.onnx.session: CPU, fp32
openvino            the same dense ONNX file as onnxruntime, compiled by OpenVINO for the CPU in fp32
"""

import copy
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.surgery import replace_submodule
from ..ops import conv2d_output_hw

BASELINES = ("dense", "torch-sparse", "onnxruntime", "onnxruntime-sparse", "openvino")


@dataclass
class Engine:
    name: str
    prepare: object  # x -> zero-argument callable returning the output for x
    note: str = ""
    graphable: bool = True  # a torch module CUDA graphs can capture


class EngineUnavailable(RuntimeError):
    """This engine cannot run here; the message says why (recorded in the report)."""


def parse_baselines(spec):
    names = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))


def _to_csr(weight):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return weight.to_sparse_csr()


class TorchSparseLinear(nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.weight = _to_csr(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(self.weight, flat.t()).t()
        y = y + self.bias if self.bias is not None else y
        return y.reshape(*x.shape[:-1], y.shape[-1])


class TorchSparseConv2d(nn.Module):
    """conv2d as W_csr @ unfold(x), the way torch.sparse runs a convolution."""

    def __init__(self, conv):
        super().__init__()
        self.weight = _to_csr(conv.weight.detach().reshape(conv.out_channels, -1))
        self.bias = conv.bias
        self.conv = dict(kernel_size=conv.kernel_size, dilation=conv.dilation, padding=conv.padding,
                         stride=conv.stride)

    def forward(self, x):
        n, _, h, w = x.shape
        cols = F.unfold(x, **self.conv)  # [N, Cin*kh*kw, L]
        k, positions = cols.shape[1:]
        y = torch.sparse.mm(self.weight, cols.transpose(0, 1).reshape(k, n * positions))
        y = y.reshape(-1, n, positions).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias[:, None]
        out_h, out_w = conv2d_output_hw((h, w), **self.conv)
        return y.reshape(n, -1, out_h, out_w)


def torch_sparse_model(dense, summary):
    """(model, note): `dense` with the layers the plan runs sparse holding torch.sparse CSR
    weights; grouped convolutions stay dense (torch.sparse.mm has no grouped form)."""
    model = copy.deepcopy(dense)
    kept = []
    for row in summary:
        if row.format == "dense":
            continue
        layer = model.get_submodule(row.name)
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or isinstance(layer.padding, str)):
            kept.append(row.name)
            continue
        replace_submodule(model, row.name, (TorchSparseLinear if isinstance(layer, nn.Linear)
                                            else TorchSparseConv2d)(layer))
    note = (f"{len(kept)} grouped or string-padded conv layer(s) left dense: {', '.join(kept[:4])}"
            f"{', ...' if len(kept) > 4 else ''}" if kept else "")
    return model.eval(), note


class DenseOnnx:
    """The dense model exported once to ONNX under `directory`, batch dimension dynamic, for every
    engine that runs an ONNX file (onnxruntime, OpenVINO): `path()` exports on first use and
    raises EngineUnavailable, then and on every later call, when the export failed."""

    def __init__(self, dense, example, directory):
        self.dense, self.example, self.directory = dense, example, directory
        self._path = self._error = None

    def path(self):
        if self._path is None and self._error is None:
            try:
                self._path = self._export()
            except EngineUnavailable as e:
                self._error = e
        if self._error is not None:
            raise self._error
        return self._path

    def _export(self):
        try:
            from ..onnx.export import without_kv_cache
            from ..onnx.quiet import quiet_exporter
        except ImportError as e:
            raise EngineUnavailable(f"onnx is not installed ({e})") from None
        path = os.path.join(self.directory, "dense.onnx")
        # sparse_rt.onnx.export fixes the input shapes; exported here with a dynamic batch dimension,
        # one export serves every batch size. A batch of 2 keeps the exporter from specializing the
        # batch dimension to 1.
        sample = self.example[:1].expand(2, *self.example.shape[1:]).contiguous().cpu()
        try:
            exported = copy.deepcopy(self.dense).cpu()
            with quiet_exporter(), without_kv_cache(exported):  # quiet: warnings on unrelated torchvision ops
                torch.onnx.export(exported, (sample,), path, dynamo=True, verbose=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as e:  # the exporter raises many types; any of them means no ONNX baseline
            raise EngineUnavailable(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:300]}") from None
        return path


def onnxruntime_engine(dense_onnx, *, threads, device):
    """An Engine running the DenseOnnx file in stock onnxruntime with `threads` intra-op threads."""
    try:
        import onnxruntime as ort

        from ..onnx import session
    except ImportError as e:
        raise EngineUnavailable(f"onnxruntime or onnx is not installed ({e})") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineUnavailable("this onnxruntime has no CUDAExecutionProvider")
        providers.insert(0, "CUDAExecutionProvider")
    sess = session(dense_onnx.path(), register_ops=False, providers=providers, intra_op_num_threads=threads)
    input_name = sess.get_inputs()[0].name

    def prepare(x):
        # Host arrays in and out (the plain onnxruntime API); for CUDA this includes the copies.
        feed = {input_name: x.detach().cpu().numpy()}
        return lambda: sess.run(None, feed)[0]

    note = "host numpy in/out (copies included)" if device.type == "cuda" else ""
    return Engine("onnxruntime", prepare, note, graphable=False)


def onnxruntime_sparse_engine(sparse_module, directory, *, threads, device):
    """An Engine running sparse_rt's sparse ONNX flavour of `sparse_module` (its sparse layers
    sparse_rt's) in onnxruntime with sparse_rt's ops (sparse_rt.onnx.session). The flavour's
    input shapes are fixed, so each batch size gets its own export, made when it is first run."""
    if device.type != "cpu":
        raise EngineUnavailable("the sparse ONNX flavour's ops run on sparse_rt's CPU kernels: CPU only")
    from ..ops import onnxruntime_kernels_library

    native = onnxruntime_kernels_library() is not None
    try:
        import onnxruntime  # noqa: F401

        if not native:
            import onnxruntime_extensions  # noqa: F401

        from ..onnx import export, session
    except ImportError as e:
        raise EngineUnavailable(f"onnx, onnxruntime or (without sparse_rt's native onnxruntime kernels) "
                                f"onnxruntime-extensions is not installed ({e})") from None
    dtypes = {t.dtype for t in (*sparse_module.parameters(), *sparse_module.buffers()) if t.is_floating_point()}
    if dtypes - {torch.float32}:
        raise EngineUnavailable("the sparse ONNX flavour runs fp32 models only, not "
                                + ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes - {torch.float32})))
    sessions = {}

    def prepare(x):
        shape = tuple(x.shape)
        if shape not in sessions:
            path = os.path.join(directory, f"sparse-{'x'.join(map(str, shape))}.onnx")
            export(sparse_module, path, x.detach().clone(), flavor="sparse")
            sessions[shape] = session(path, intra_op_num_threads=threads)
        sess = sessions[shape]
        feed = {sess.get_inputs()[0].name: x.detach().numpy()}
        return lambda: sess.run(None, feed)[0]

    kernels = "native onnxruntime kernels" if native else "Python ops"
    return Engine("onnxruntime-sparse", prepare,
                  f"sparse_rt's ONNX sparse flavour, {kernels} (one export per batch size)", graphable=False)


def openvino_engine(dense_onnx, *, threads, device):
    """An Engine running the DenseOnnx file in OpenVINO on the CPU: PERFORMANCE_HINT LATENCY,
    INFERENCE_NUM_THREADS `threads`, and INFERENCE_PRECISION_HINT f32 (on CPUs with AVX-512 BF16
    OpenVINO computes in bf16 by default: forced to fp32 for a like-for-like comparison). Each
    batch size gets the model reshaped to its static input shape and compiled, as a latency user
    would run it."""
    if device.type != "cpu":
        raise EngineUnavailable("OpenVINO is benchmarked on the CPU only (its GPU plugin is for Intel GPUs)")
    try:
        import openvino as ov
    except ImportError as e:
        raise EngineUnavailable(f"openvino is not installed ({e}); it comes with sparse_rt's bench extra") from None
    core = ov.Core()
    path = dense_onnx.path()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    requests = {}

    def prepare(x):
        shape = tuple(x.shape)
        if shape not in requests:
            model = core.read_model(path)
            model.reshape(list(shape))
            requests[shape] = core.compile_model(model, "CPU", config).create_infer_request()
        request = requests[shape]
        feed = {0: x.detach().cpu().numpy()}

        def run():
            request.infer(feed, share_inputs=True)
            return request.get_output_tensor(0).data

        return run

    note = (f"openvino {ov.__version__.split('-')[0]}: fp32 forced (INFERENCE_PRECISION_HINT f32), "
            "LATENCY hint, static shape per batch size")
    return Engine("openvino", prepare, note, graphable=False)


def torch_engine(name, module, note=""):
    return Engine(name, lambda x: (lambda: module(x)), note)

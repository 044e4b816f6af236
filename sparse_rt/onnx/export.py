"""ONNX export of any nn.Module holding sparse_rt layers (SparseModel, ensembles, plain modules)."""

import contextlib
import os
from dataclasses import dataclass

import onnx
import onnx_ir.passes.common as passes
import torch
from onnx.external_data_helper import set_external_data

from ..io import atomic_write
from ..nn._sparse_weight import SparseWeightModule
from ..nn.surgery import dense_copy
from . import portable
from .fold import fold_batchnorm_and_relu
from .quiet import quiet_exporter
from .translation import translation_table

FLAVORS = ("portable", "sparse")
# Protobuf cannot serialize 2 GiB; above this many initializer bytes, weights go to a side file.
_EXTERNAL_DATA_BYTES = 1 << 30
_EXTERNAL_DATA_MIN_TENSOR_BYTES = 1024  # smaller tensors stay in the model file


@dataclass
class ExportResult:
    path: str
    flavor: str
    opset: int
    ir_version: int
    file_bytes: int  # the .onnx file plus its external data file, if any
    max_abs_diff: float = None  # onnxruntime vs PyTorch on the example inputs (check=True)
    max_rel_diff: float = None  # max_abs_diff / max |PyTorch output|

    def __str__(self):
        s = (f"{self.path}: {self.flavor} flavour, opset {self.opset}, IR {self.ir_version}, "
             f"{self.file_bytes / 2**20:.2f} MiB")
        if self.max_abs_diff is not None:
            s += (f"; onnxruntime vs PyTorch: max |diff| {self.max_abs_diff:.3e} "
                  f"(relative {self.max_rel_diff:.3e})")
        return s


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _external_data_path(path):
    return path + ".data"


def export(model, path, example_inputs, *, flavor="portable", opset=None, check=False,
           external_data=None):
    """Exports `model` (an nn.Module whose sparse layers are sparse_rt's) to ONNX at `path`.

    flavor "portable": standard ONNX ops only; each sparse weight is stored as values + uint8
    index deltas and rebuilt into a dense tensor by standard ops (stock onnxruntime runs it).
    flavor "sparse": our ops (domain "sparse_rt": CsrLinear, BsrLinear, CsrConv2d) with
    crow/col/values as initializers, batch norm and ReLU after a sparse conv folded into it; run
    it with sparse_rt.onnx.session.
    `example_inputs` (a tensor or a tuple) fixes the input shapes. `opset` defaults to torch's.
    `external_data`: weights in `path + ".data"`; None = only above 1 GiB of weights.
    `check`: run onnxruntime on the example inputs and compare with the model (fills
    max_abs_diff / max_rel_diff of the returned ExportResult).
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"export expects an nn.Module, got {type(model).__name__}")
    path = os.fspath(path)
    args = _as_tuple(example_inputs)
    _refuse_stored_weights(model, args)
    model = model.eval()
    if flavor == "portable":
        traced, table = portable.to_portable(model), None
    else:
        traced, table = model, translation_table()
    _check_runs(model, args)
    try:
        with quiet_exporter(), torch.inference_mode(False), without_kv_cache(traced):
            program = torch.onnx.export(traced, args, dynamo=True, opset_version=opset,
                                        custom_translation_table=table, verbose=False,
                                        # no constant folding: it would rebuild the dense weights
                                        optimize=flavor == "sparse")
    except Exception as e:
        _raise_if_the_model_itself_fails(model, args, opset, e)
        raise
    # Node metadata (stack traces with local paths) would outweigh a small model's weights;
    # unused initializers (e.g. an ensemble's per-member copies next to the fused ones) go too.
    for cleanup in (passes.ClearMetadataAndDocStringPass(), passes.RemoveUnusedNodesPass()):
        cleanup(program.model)
    proto = program.model_proto
    if opset is not None and _onnx_opset(proto) != opset:
        # torch exports at its own opset and converts; a failed conversion only logs and keeps its own
        raise ValueError(f"opset {opset} cannot be exported: torch.onnx.export produced opset {_onnx_opset(proto)} "
                         "instead (its conversion to that opset failed)")
    if flavor == "sparse":
        fold_batchnorm_and_relu(proto)
    # The newest onnx writes an IR version onnxruntime may not read yet; the opsets used fix the
    # smallest one that is valid.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    _save(proto, path, external_data)
    onnx.checker.check_model(path, full_check=True)
    result = ExportResult(path, flavor, _onnx_opset(proto), proto.ir_version, _file_bytes(path))
    if check:
        result.max_abs_diff, result.max_rel_diff = compare(model, path, args, flavor)
    return result


def _refuse_stored_weights(model, args):
    """Raises ValueError where a sparse layer keeps 16-bit values for floating inputs of another dtype
    (SparseWeightModule.store_weights): ONNX ops take their weights and inputs in one dtype."""
    dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
    if not dtypes:
        return
    for name, layer in model.named_modules():
        if isinstance(layer, SparseWeightModule) and layer.values.dtype not in dtypes:
            raise ValueError(f"layer '{name}' stores its values in {layer.values.dtype} (store_weights) but the "
                             f"inputs are {', '.join(sorted(map(str, dtypes)))}: ONNX ops take weights and inputs in "
                             f"one dtype; call store_weights({next(iter(dtypes))}) before exporting")


@contextlib.contextmanager
def without_kv_cache(model):
    """A Hugging Face decoder (config.use_cache) returns its key/value cache, an object the exporter
    cannot take: an exported graph is one forward pass, so the cache is off while exporting."""
    configs = [c for c in {id(c): c for c in (getattr(m, "config", None) for m in model.modules())}.values()
               if getattr(c, "use_cache", False) is True]
    for config in configs:
        config.use_cache = False
    try:
        yield
    finally:
        for config in configs:
            config.use_cache = True


class ModelNotExportableError(ValueError):
    """torch.onnx.export fails on the model's own code: its dense copy fails the same way."""


def _raise_if_the_model_itself_fails(model, args, opset, error):
    """Exports the model's dense copy (no sparse_rt layer left) after the export failed: when that
    fails too, the exporter cannot take the model's own code, and ModelNotExportableError says so
    and where (the model line the exporter names); otherwise the failure is ours and stands."""
    try:
        with quiet_exporter(), torch.inference_mode(False):
            torch.onnx.export(dense_copy(model), args, dynamo=True, opset_version=opset, verbose=False,
                              optimize=False)
    except Exception as dense_error:  # noqa: BLE001  (any failure of the dense export is the model's)
        summary = str(dense_error).partition("## Exception summary")[2].strip().splitlines()
        reason = next((line for line in summary if line.strip()), type(dense_error).__name__)
        raise ModelNotExportableError(
            f"torch.onnx.export fails on this model's own code, not on sparse_rt's layers (its dense copy fails the "
            f"same way): {reason.strip()}{_model_line(str(dense_error))}") from error


def _model_line(message):
    """' at FILE:LINE: CODE' of the innermost frame of the exporter's "Original traceback", or ''."""
    frames = message.partition("Original traceback:")[2].splitlines()
    located = [i for i, line in enumerate(frames) if line.strip().startswith('File "') and
               not line.strip().startswith('File "<')]  # a real file, not generated code
    if not located:
        return ""
    where = frames[located[-1]].strip().removeprefix("File ").replace('"', "").replace(", line ", ":")
    code = frames[located[-1] + 1].strip() if located[-1] + 1 < len(frames) else ""
    return f" at {where.split(', in ')[0]}: {code}"


def _check_runs(model, args):
    """Raises ValueError when the model rejects inputs of these shapes, before the exporter fails
    on them deep inside torch.export."""
    try:
        with torch.inference_mode():
            model(*args)
    except RuntimeError as e:
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"the model does not run on inputs of shape {shapes}: {first_line}") from None


def _onnx_opset(proto):
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _save(proto, path, external_data):
    """Writes `proto` to `path` with sparse_rt.io.atomic_write, and with `external_data` its
    initializers of 1 KiB or more to `path + ".data"`: both files are complete and fsync'ed
    under temporary names before the data file is renamed into place, then the model file. A kill
    before the first rename leaves the previous pair; one between the two renames (a short window)
    leaves the previous model beside the new data file (see README, "Deploy with ONNX").
    An existing data file is replaced only together with the model, never removed."""
    if external_data is None:
        external_data = sum(len(t.raw_data) for t in proto.graph.initializer) > _EXTERNAL_DATA_BYTES
    with atomic_write(path) as model_file:
        if external_data:
            location = _external_data_path(path)
            with atomic_write(location) as data_file:
                _move_to_external_data(proto, data_file, os.path.basename(location))
                model_file.write(proto.SerializeToString())
                model_file.flush()
                os.fsync(model_file.fileno())  # so that only the renames stand between the two files
        else:
            model_file.write(proto.SerializeToString())


def _move_to_external_data(proto, data_file, location):
    """Streams the raw data of `proto`'s initializers of 1 KiB or more to `data_file` and points
    them at it (`location`, relative to the model file)."""
    for tensor in proto.graph.initializer:
        if len(tensor.raw_data) < _EXTERNAL_DATA_MIN_TENSOR_BYTES:
            continue
        offset = data_file.tell()
        data_file.write(tensor.raw_data)
        set_external_data(tensor, location, offset, len(tensor.raw_data))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")


def _file_bytes(path):
    extra = _external_data_path(path)
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)


def compare(model, path, example_inputs, flavor):
    """(max |onnxruntime - PyTorch|, that / max |PyTorch|) over all outputs on `example_inputs`."""
    from .session import session

    args = _as_tuple(example_inputs)
    sess = session(path) if flavor == "sparse" else session(path, register_ops=False)
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    got = sess.run(None, feeds)
    with torch.inference_mode(), without_kv_cache(model):  # as exported
        expected = [t.detach().float().cpu() for t in _flatten(model(*args))]
    if len(got) != len(expected):
        raise RuntimeError(f"{path}: onnxruntime returned {len(got)} outputs, PyTorch {len(expected)}")
    diff = max((torch.from_numpy(g).float() - e).abs().max().item() for g, e in zip(got, expected))
    scale = max(e.abs().max().item() for e in expected)
    return diff, diff / scale if scale else diff


def _flatten(out):
    """The tensors of an output in the exporter's order (None entries of a ModelOutput left out)."""
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flatten(item)]

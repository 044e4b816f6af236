import torch
from torch import nn

from ..formats import BSR, CSR

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# What SparseWeightModule.store_weights keeps values in, and the bound on what that changes in a
# layer's fp32 output y = W x + b (a guarantee of round-to-nearest, tested in tests/test_weight_storage.py):
#   |y_stored - y_fp32| <= relative * sum_k |W_k x_k| + absolute * sum_k |x_k|   per output
# relative: the format's unit roundoff (8 significant bits for bf16, 11 for fp16); absolute: half the
# spacing of its subnormals, for weights below its normal range (fp16: 6.1e-5; bf16: fp32's). The fp32 sums' own
# rounding comes on top, as for any fp32 weight.
WEIGHT_STORAGE_DTYPES = KERNEL_DTYPES  # the value dtypes the kernels read
WEIGHT_STORAGE_ERROR = {torch.float32: (0.0, 0.0), torch.bfloat16: (2.0**-8, 2.0**-134),
                        torch.float16: (2.0**-11, 2.0**-25)}


def check_weight_and_bias(weight, bias, what, contiguous=False):
    """Raises ValueError unless `weight` (CSR/BSR) is valid and, with `bias`, is what the kernels
    take: a value dtype they implement, one device, bias [rows] of that dtype (and, with
    `contiguous`, contiguous tensors: the kernels read them as flat arrays)."""
    weight.validate()
    where = f"{what}: " if what else ""
    if weight.values.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{where}values dtype {weight.values.dtype} is not one the kernels implement "
                         f"(float32, float16, bfloat16)")
    for name in ("crow_indices", "col_indices", "values") if contiguous else ():
        if not getattr(weight, name).is_contiguous():
            raise ValueError(f"{where}{name} must be contiguous")
    if bias is None:
        return
    check_bias_shape(bias, weight.shape[0], where)
    # An fp32 bias beside 16-bit values: a layer whose weights store_weights() keeps in 16 bits.
    if bias.dtype != weight.values.dtype and not (bias.dtype == torch.float32 and weight.values.element_size() == 2):
        raise ValueError(f"{where}bias dtype {bias.dtype} differs from the values dtype {weight.values.dtype}")
    if bias.device != weight.values.device:
        raise ValueError(f"{where}bias is on {bias.device} but the weight is on {weight.values.device}")


def check_bias_shape(bias, rows, where):
    if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (rows,):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{where}bias must have shape ({rows},), got {got}")


def check_keys_before_loading(module, state_dict, strict):
    """With strict=True, raises torch's missing/unexpected-keys error before any tensor is loaded.
    torch copies the keys that are there first and complains afterwards, which would leave a
    module half-loaded by a load that failed; its layers cannot tell, since torch passes them
    strict=True either way."""
    if not strict:
        return
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    problems = [f"{what} key(s) in state_dict: {', '.join(repr(k) for k in keys)}."
                for what, keys in (("Unexpected", unexpected), ("Missing", missing)) if keys]
    if problems:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}:\n\t" + "\n\t".join(problems))


class DenseWeightView(torch.Tensor):
    """What `.weight` is on a sparse layer: a tensor with the dense weight's shape, dtype and
    device that stores nothing, for model code that asks nn.Linear / nn.Conv2d questions
    (`self.proj.weight.dtype`, `.device`, `.shape`). Reading its values (any op on it) builds the
    dense weight for that op from the layer's sparse buffers: correct, at the cost of a dense
    weight per op. Writing to it (in-place ops, copy_, item assignment) raises: the weight lives in
    the layer's crow_indices / col_indices / values."""

    @staticmethod
    def __new__(cls, layer):
        return torch.Tensor._make_wrapper_subclass(cls, layer.dense_shape, dtype=layer.values.dtype,
                                                   device=layer.values.device, requires_grad=False)

    def __init__(self, layer):
        self.layer = layer

    def __setitem__(self, index, value):
        raise RuntimeError(f"{type(self.layer).__name__}.weight is a read-only view of the sparse weight (item "
                           "assignment); change the layer's crow_indices / col_indices / values, or convert a "
                           "dense copy (sparse_rt.nn.surgery.dense_copy)")

    def __repr__(self):
        return f"DenseWeightView(shape={tuple(self.shape)}, dtype={self.dtype}, layer={type(self.layer).__name__})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Defined (not inherited) so that code with dense fast paths (nn.TransformerEncoderLayer's)
        # sees an overriding tensor and takes the path that calls the layers; results stay plain.
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        views = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, DenseWeightView)]
        if any(argument.alias_info is not None and argument.alias_info.is_write
               for argument in func._schema.arguments):
            name = type(views[0].layer).__name__ if views else "sparse layer"
            raise RuntimeError(f"{name}.weight is a read-only view of the sparse weight ({func.__name__} writes to "
                               "it); change the layer's crow_indices / col_indices / values, or convert a dense "
                               "copy (sparse_rt.nn.surgery.dense_copy)")
        dense = lambda a: a.layer.dense_weight() if isinstance(a, DenseWeightView) else a
        args, kwargs = torch.utils._pytree.tree_map(dense, (args, kwargs))
        return func(*args, **kwargs)


class SparseWeightModule(nn.Module):
    """Base of the sparse layers: the weight lives in three plain buffers (crow_indices,
    col_indices, values) plus an optional bias buffer, so state_dict, .to(), torch.export and ONNX
    export see ordinary tensors. `.weight` is a DenseWeightView, for code written against
    nn.Linear / nn.Conv2d."""

    format = "csr"
    # The epilogue sparse_rt.fusion gives a layer: whether the kernel applies ReLU to the output,
    # and whether the model passes it a residual to add (forward(input, residual)).
    relu = False
    adds_residual = False

    @property
    def weight(self):
        return DenseWeightView(self)

    def _set_weight(self, weight, bias):
        check_weight_and_bias(weight, bias, type(self).__name__)
        self.register_buffer("crow_indices", weight.crow_indices.contiguous())
        self.register_buffer("col_indices", weight.col_indices.contiguous())
        self.register_buffer("values", weight.values.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(weight.shape)

    def _weight_tensors(self):
        """(crow_indices, col_indices, values, bias), read from the buffer dict: reading a buffer as
        an attribute goes through nn.Module.__getattr__ (0.7 us on a Zen 4), which a layer's call did
        six times. Falls back to the attributes where one of them is no longer a buffer."""
        buffers = self._buffers
        try:
            return buffers["crow_indices"], buffers["col_indices"], buffers["values"], buffers["bias"]
        except KeyError:
            return self.crow_indices, self.col_indices, self.values, self.bias

    def _container(self, crow, col, values):
        if self.format == "bsr":
            return BSR(crow, col, values, self.weight_shape, tuple(values.shape[1:]))
        return CSR(crow, col, values, self.weight_shape)

    def _epilogue(self, input, residual, run):
        """run(relu, residual) -> the op's output, with the ReLU and the residual in the kernel's
        epilogue when the residual has the output's shape, dtype and device (output_shape); a
        broadcasting or type-promoting residual is added after the kernel, as `y + residual` did."""
        if residual is None or (residual.shape == self.output_shape(input)
                                and residual.dtype == input.dtype and residual.device == input.device):
            return run(self.relu, residual)
        y = run(False, None) + residual
        return torch.relu(y) if self.relu else y

    def store_weights(self, dtype):
        """Keeps this layer's nonzero values in `dtype` (WEIGHT_STORAGE_DTYPES: torch.bfloat16 or
        torch.float16 to halve them, torch.float32 to widen them back), each rounded to the nearest;
        the bias, the indices and the activations keep their dtypes. An fp32 input then still computes
        in fp32 on the CPU, each value widened as the kernels read it; the output moves from the fp32
        weight's by at most the rounding (WEIGHT_STORAGE_ERROR). CUDA ops refuse fp32 inputs with
        16-bit values. `.weight.dtype` reports `dtype` (model code that casts its input to its
        weight's dtype then runs in 16 bits)."""
        if dtype not in WEIGHT_STORAGE_DTYPES:
            raise ValueError(f"{type(self).__name__}.store_weights: dtype must be one of "
                             f"{', '.join(map(str, WEIGHT_STORAGE_DTYPES))}, got {dtype}")
        values = self.values.detach()
        if values.device.type != "cpu" and dtype != torch.float32:
            raise ValueError(f"{type(self).__name__}.store_weights: 16-bit values beside fp32 inputs run on the "
                             f"CPU only, and this layer is on {values.device} (there, model.to({dtype}) runs it in "
                             "16 bits)")
        stored = values.to(dtype)
        overflow = torch.isfinite(values) & ~torch.isfinite(stored)
        if overflow.any():
            largest = values[overflow].abs().max().item()
            raise ValueError(f"{type(self).__name__}.store_weights: a value of magnitude {largest:g} exceeds {dtype}'s "
                             f"range ({torch.finfo(dtype).max:g})")
        self.values = stored.contiguous()

    def sparse_weight(self):
        """The weight as a CSR or BSR container sharing this module's buffers."""
        return self._container(self.crow_indices, self.col_indices, self.values)

    @property
    def nnz(self):
        return self.sparse_weight().nnz

    @property
    def density(self):
        return self.sparse_weight().density

    def extra_repr(self):
        blocks = f"{tuple(self.values.shape[1:])}" if self.format == "bsr" else ""
        return (f"{self._shape_repr()}, bias={self.bias is not None}, format={self.format}{blocks}, "
                f"density={self.density:.3f}{', adds_residual=True' if self.adds_residual else ''}"
                f"{', relu=True' if self.relu else ''}")

    def load_state_dict(self, state_dict, strict=True, assign=False):
        check_keys_before_loading(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint may hold a different number of nonzeros than this module, or only some of
        # the weight's keys (torch loads the keys present, strict or not, and only then raises for
        # the missing ones): validate the weight as it will be after the load (given tensors where
        # the state_dict has them, this module's buffers elsewhere) before anything changes, then
        # resize the given buffers to it before torch copies. With assign=True (the .srt loader's path)
        # the tensors are taken as they are, so their dtypes, devices and contiguity are checked
        # too; otherwise torch copies them into this module's buffers, which already satisfy those.
        names = ("crow_indices", "col_indices", "values")
        given = {name: state_dict[prefix + name] for name in names if prefix + name in state_dict}
        if given or prefix + "bias" in state_dict:
            crow, col, values = (given.get(name, getattr(self, name)) for name in names)
            assign = local_metadata.get("assign_to_params_buffers", False)
            bias = state_dict.get(prefix + "bias", self.bias)
            layer = prefix[:-1] or type(self).__name__
            try:
                weight = self._container(crow, col, values)
                if assign:
                    check_weight_and_bias(weight, bias, "", contiguous=True)
                else:
                    weight.validate()
                    if self.bias is not None:
                        check_bias_shape(bias, weight.shape[0], "")
            except ValueError as e:
                raise ValueError(f"layer '{layer}': invalid sparse weight in state_dict: {e}") from None
            for name, tensor in given.items():
                current = getattr(self, name)
                setattr(self, name, torch.empty(tensor.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

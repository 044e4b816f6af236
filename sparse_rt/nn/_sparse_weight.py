import torch
from torch import nn

from ..formats import BSR, CSR


class SparseWeightModule(nn.Module):
    """Base of the sparse layers: the weight lives in three plain buffers (crow_indices,
    col_indices, values) plus an optional bias buffer, so state_dict, .to(), torch.export and ONNX
    export see ordinary tensors."""

    format = "csr"

    def _set_weight(self, weight, bias):
        weight.validate()
        self.register_buffer("crow_indices", weight.crow_indices.contiguous())
        self.register_buffer("col_indices", weight.col_indices.contiguous())
        self.register_buffer("values", weight.values.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_shape = tuple(weight.shape)

    def _container(self, crow, col, values):
        if self.format == "bsr":
            return BSR(crow, col, values, self.weight_shape, tuple(values.shape[1:]))
        return CSR(crow, col, values, self.weight_shape)

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
                f"density={self.density:.3f}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint may hold a different number of nonzeros than this module: validate the
        # incoming index structure first, then resize the buffers to it before torch copies.
        keys = [prefix + n for n in ("crow_indices", "col_indices", "values")]
        if all(k in state_dict for k in keys):
            crow, col, values = (state_dict[k] for k in keys)
            layer = prefix[:-1] or type(self).__name__
            try:
                self._container(crow, col, values).validate()
            except ValueError as e:
                raise ValueError(f"layer '{layer}': invalid sparse weight in state_dict: {e}") from None
            self.crow_indices = torch.empty_like(crow, device=self.crow_indices.device)
            self.col_indices = torch.empty_like(col, device=self.col_indices.device)
            self.values = torch.empty(values.shape, dtype=self.values.dtype, device=self.values.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

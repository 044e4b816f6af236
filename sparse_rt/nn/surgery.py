"""Editing a model's layers: which layers carry a weight sparse_rt can convert, swapping a submodule,
and turning sparse layers back into dense ones. The one table of weight-layer types lives here."""

import copy

import torch
from torch import nn

from .conv import SparseConv2d
from .linear import SparseLinear

# Dense layers sparsify() converts, by exact type (a subclass may change forward), and their kind.
CONVERTIBLE = {nn.Linear: "Linear", nn.Conv2d: "Conv2d"}
SPARSE_LAYERS = (SparseLinear, SparseConv2d)
# Every layer with a Linear/Conv2d weight, dense or sparse.
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d, *SPARSE_LAYERS)


def layer_kind(layer: nn.Module) -> str:
    """"Linear" or "Conv2d" for any of WEIGHT_LAYERS."""
    return "Linear" if isinstance(layer, (nn.Linear, SparseLinear)) else "Conv2d"


def convertible_layers(module: nn.Module) -> dict:
    """{name: layer} of the nn.Linear / nn.Conv2d layers sparsify() considers."""
    return {n: m for n, m in module.named_modules() if type(m) in CONVERTIBLE}


def weight_layers(module: nn.Module) -> dict:
    """{name: layer} of every Linear/Conv2d layer of `module`, dense or sparse."""
    return {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense tensor shaped like the nn.Linear / nn.Conv2d weight."""
    if isinstance(layer, SPARSE_LAYERS):
        return layer.dense_weight()
    return layer.weight.detach()


def _prune_hooks(module: nn.Module) -> list:
    """The torch.nn.utils.prune reparametrisations on `module` itself: one hook per pruned tensor
    name (a PruningContainer when pruned more than once)."""
    from torch.nn.utils import prune

    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def copy_module(module: nn.Module) -> nn.Module:
    """copy.deepcopy(module), also for a model pruned with torch.nn.utils.prune whose masks are
    still in place: there each pruned `weight` is `weight_orig * weight_mask`, a non-leaf tensor
    that deepcopy refuses, so the copy gets it detached (its hooks recompute it on the next
    forward, as in the original)."""
    memo = {}
    for layer in module.modules():
        for hook in _prune_hooks(layer):
            computed = getattr(layer, hook._tensor_name)
            memo[id(computed)] = computed.detach().clone()
    return copy.deepcopy(module, memo)


def remove_pruning(module: nn.Module) -> dict:
    """Bakes every torch.nn.utils.prune mask of `module` into its tensor and removes the hooks, in
    place, so the module holds plain parameters (and its state_dict plain keys, no `*_orig` /
    `*_mask`). Returns {layer name: bool mask} of the pruned weights of convertible layers."""
    from torch.nn.utils import prune

    masks = {}
    for name, layer in module.named_modules():
        for hook in _prune_hooks(layer):
            tensor = hook._tensor_name
            mask = getattr(layer, tensor + "_mask").detach().bool()
            prune.remove(layer, tensor)
            if tensor == "weight" and type(layer) in CONVERTIBLE:
                masks[name] = mask
    return masks


def replace_submodule(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    """Puts `new` where `qualified_name` is in `root`."""
    if not qualified_name:
        raise ValueError("sparsify: the model itself is a single Linear/Conv2d; wrap it in nn.Sequential")
    parent_name, _, child = qualified_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def dense_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose SparseLinear / SparseConv2d layers are nn.Linear / nn.Conv2d with
    the same (zero-filled) weights, on the same device and dtype."""
    dense = copy.deepcopy(module)
    for name, layer in list(dense.named_modules()):
        if isinstance(layer, SparseLinear):
            new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        elif isinstance(layer, SparseConv2d):
            new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                            layer.padding, layer.dilation, layer.groups, bias=layer.bias is not None)
        else:
            continue
        weight = layer.dense_weight()
        new = new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.weight.copy_(weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        replace_submodule(dense, name, new)
    return dense

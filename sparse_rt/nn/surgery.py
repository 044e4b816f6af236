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


# Linear layers of other packages that store the weight transposed ([in, out]), by class path, so
# they are recognised without importing their package: transformers' Conv1D (GPT-2, GPT-J-style
# models) computes x @ W + b.
TRANSPOSED_LINEAR = {"transformers.pytorch_utils.Conv1D"}


def _class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def is_transposed_linear(module: nn.Module) -> bool:
    return _class_path(module) in TRANSPOSED_LINEAR


def convertible_kind(module: nn.Module):
    """"Linear" or "Conv2d" for a layer sparsify() converts, else None."""
    if type(module) in CONVERTIBLE:
        return CONVERTIBLE[type(module)]
    return "Linear" if is_transposed_linear(module) else None


def convertible_layers(module: nn.Module) -> dict:
    """{name: layer} of the layers sparsify() considers: nn.Linear, nn.Conv2d, TRANSPOSED_LINEAR."""
    return {n: m for n, m in module.named_modules() if convertible_kind(m)}


def as_standard_layer(layer: nn.Module) -> nn.Module:
    """The layer as an nn.Linear / nn.Conv2d computing the same thing: itself, or for a transposed
    linear an nn.Linear whose weight is a transposed view of the layer's (no copy)."""
    if type(layer) in CONVERTIBLE:
        return layer
    in_features, out_features = layer.weight.shape
    linear = nn.Linear(in_features, out_features, bias=layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(layer.weight.detach().t(), requires_grad=False)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.detach(), requires_grad=False)
    return linear


def unconverted_linear_likes(module: nn.Module) -> dict:
    """{name: (layer, why)} of Linear/Conv2d subclasses sparsify() leaves dense: a subclass may
    change forward, and nn.MultiheadAttention reads its out_proj's weight itself."""
    attention_projections = {f"{n}.out_proj" if n else "out_proj" for n, m in module.named_modules()
                             if isinstance(m, nn.MultiheadAttention)}
    found = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and type(layer) not in CONVERTIBLE:
            found[name] = (layer, "kept dense: nn.MultiheadAttention passes out_proj.weight to its own kernel"
                           if name in attention_projections else
                           f"kept dense: {type(layer).__name__} subclasses {type(layer).__mro__[1].__name__} and may "
                           "change its forward")
    return found


def weight_layers(module: nn.Module) -> dict:
    """{name: layer} of every Linear/Conv2d layer of `module`, dense or sparse."""
    return {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense tensor shaped like the nn.Linear / nn.Conv2d weight."""
    if isinstance(layer, SPARSE_LAYERS):
        return layer.dense_weight()
    return layer.weight.detach()


def _prune_hooks(module: nn.Module) -> dict:
    """{hook id: hook} of the torch.nn.utils.prune reparametrisations on `module` itself: one per
    pruned tensor name (a PruningContainer when pruned more than once)."""
    from torch.nn.utils import prune

    return {k: h for k, h in module._forward_pre_hooks.items() if isinstance(h, prune.BasePruningMethod)}


def copy_module(module: nn.Module) -> nn.Module:
    """copy.deepcopy(module), also for a model pruned with torch.nn.utils.prune whose masks are
    still in place: there each pruned `weight` is `weight_orig * weight_mask`, a non-leaf tensor
    that deepcopy refuses, so the copy gets it detached (its hooks recompute it on the next
    forward, as in the original)."""
    memo = {}
    for layer in module.modules():
        for hook in _prune_hooks(layer).values():
            computed = getattr(layer, hook._tensor_name)
            memo[id(computed)] = computed.detach().clone()
    return copy.deepcopy(module, memo)


def remove_pruning(module: nn.Module) -> dict:
    """Bakes every torch.nn.utils.prune mask of `module` into its tensor and removes the hooks, in
    place, so the module holds plain parameters (and its state_dict plain keys, no `*_orig` /
    `*_mask`). Returns {layer name: bool mask} of the pruned weights of convertible layers.

    Unlike prune.remove, which writes the masked values into `*_orig` in place, the masked tensor
    is a new parameter: `*_orig` may be tied to another layer (GPT-2's lm_head.weight is
    transformer.wte.weight), which must not be pruned through the tie."""
    masks = {}
    for name, layer in module.named_modules():
        for key, hook in _prune_hooks(layer).items():
            tensor = hook._tensor_name
            orig, mask = layer._parameters.pop(tensor + "_orig"), layer._buffers.pop(tensor + "_mask")
            del layer._forward_pre_hooks[key]
            delattr(layer, tensor)  # the masked tensor the hook last computed
            layer.register_parameter(tensor, nn.Parameter((orig * mask).detach(), requires_grad=orig.requires_grad))
            if tensor == "weight" and convertible_kind(layer):
                masks[name] = mask.detach().bool()
    return masks


def tied_parameters(module: nn.Module) -> list:
    """[[name, other names of the same Parameter, ...], ...] for every parameter with two or more names."""
    names_of = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(parameter), []).append(name)
    return [names for names in names_of.values() if len(names) > 1]


def untie_where_values_differ(module: nn.Module, state) -> list:
    """Gives every other name of a tied parameter its own copy where `state` holds different values
    for them (a checkpoint whose masks covered only lm_head.weight of GPT-2's lm_head / wte pair):
    loaded into one shared tensor, whichever name came last would win for both. Returns the names
    untied."""
    untied = []
    for names in tied_parameters(module):
        given = [n for n in names if n in state]
        if len(given) < 2 or all(torch.equal(state[n], state[given[0]]) for n in given[1:]):
            continue
        for name in names[1:]:
            owner, _, attr = name.rpartition(".")
            shared = module.get_parameter(name)
            setattr(module.get_submodule(owner), attr,
                    nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad))
            untied.append(f"{name} (was {names[0]})")
    return untied


def replace_submodule(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    """Puts `new` where `qualified_name` is in `root`."""
    if not qualified_name:
        raise ValueError("sparsify: the model itself is a single Linear/Conv2d; wrap it in nn.Sequential")
    parent_name, _, child = qualified_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


class DenseWithEpilogue(nn.Module):
    """A dense layer followed by what a fused sparse layer's kernel epilogue does: the residual
    sum and the ReLU (sparse_rt.fusion); called like the sparse layer, forward(input, residual)."""

    def __init__(self, layer: nn.Module, relu: bool):
        super().__init__()
        self.layer, self.relu = layer, relu

    def forward(self, input, residual=None):
        y = self.layer(input)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.relu else y


def dense_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose SparseLinear / SparseConv2d layers are nn.Linear / nn.Conv2d with
    the same (zero-filled) weights, on the same device and dtype (in a DenseWithEpilogue where
    sparse_rt.fusion gave the sparse layer a residual or a ReLU)."""
    dense = copy_module(module)
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
        fused = layer.relu or layer.adds_residual
        replace_submodule(dense, name, DenseWithEpilogue(new, layer.relu) if fused else new)
    return dense

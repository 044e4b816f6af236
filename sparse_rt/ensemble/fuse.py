"""Fused execution of M members of one architecture: a torch.fx graph whose tensors carry the
members side by side along the channel (feature) dimension, member-major (channel i*C + c is
channel c of member i), so each layer of the ensemble is one module and one kernel.

* a Linear/Conv2d on the shared input stacks the members' rows ([M*out, fan-in], groups kept);
* later ones are block-diagonal: a conv with groups g becomes groups g*M over the concatenated
  rows (CSR column indices stay local to their group); a Linear shifts member i's columns by i*F;
* BatchNorm concatenates its parameters and statistics; ReLU, pools, residual adds, dropout and
  flatten(x, 1) act per channel (or keep the member-major order) and run unchanged;
* (log-)softmax runs per member.
The output [B, M*C] is returned as [M, B, C].
"""

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..formats import CSR
from ..nn import SparseConv2d, SparseLinear
from ..nn.conv import explicit_padding
from .masks import layer_csr


class FusionError(ValueError):
    """The members cannot be fused; `where` names the module or operation that prevents it."""

    def __init__(self, where, reason):
        super().__init__(f"{where}: {reason}")
        self.where = where


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, (SparseLinear, SparseConv2d)) or super().is_leaf_module(m, qualname)


def _trace(module):
    try:
        return fx.GraphModule(module, _Tracer().trace(module))
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        raise FusionError(type(module).__name__, f"not traceable by torch.fx ({type(e).__name__}: {e})") from None


def expand_members(x, members):
    """A shared tensor repeated once per member along dim 1, for layers that need fused input."""
    return x.repeat(1, members, *[1] * (x.dim() - 2))


def split_members(x, members):
    """[B, M*C, ...] -> [M, B, C, ...]."""
    return x.unflatten(1, (members, -1)).movedim(1, 0)


# --- layers -------------------------------------------------------------------------------------

# Tensors that hold a member's own weights, fused by concatenation; every other attribute, buffer
# and parameter of a module must be equal in all members, since the fused module keeps member 0's.
_PER_MEMBER_TENSORS = {nn.Conv2d: {"weight", "bias"}, nn.Linear: {"weight", "bias"},
                       SparseConv2d: {"crow_indices", "col_indices", "values", "bias"},
                       SparseLinear: {"crow_indices", "col_indices", "values", "bias"},
                       nn.BatchNorm2d: {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}}
# How a weight is stored: members may keep a layer dense or in another sparse format (fused as CSR).
_WEIGHT_STORAGE = {"format", "weight_shape"}
# nn.Module's own state (hooks, registries) and the training flag, which the fused module sets.
_MODULE_BOOKKEEPING = set(vars(nn.Module()))


def _config(module):
    """What a module computes with besides its own weights: its attributes, and the buffers and
    parameters that are not per-member weights."""
    weights = next((names for kind, names in _PER_MEMBER_TENSORS.items() if isinstance(module, kind)), set())
    config = {k: v for k, v in vars(module).items() if k not in _MODULE_BOOKKEEPING | _WEIGHT_STORAGE}
    tensors = {**module._parameters, **module._buffers}
    config.update({k: v for k, v in tensors.items() if k not in weights})
    return config


def _check_same_config(layers, name):
    """Raises FusionError naming the first attribute (or tensor) in which the members differ. A
    layer dense in one member and sparse in another is compared on the attributes both have."""
    configs = [_config(layer) for layer in layers]
    same_type = all(type(layer) is type(layers[0]) for layer in layers)
    keys = set(configs[0]) if same_type else set.intersection(*(set(c) for c in configs))
    for i, config in enumerate(configs[1:], 1):
        if same_type and set(config) != keys:
            raise FusionError(name, f"members 0 and {i} differ in their attributes "
                                    f"({', '.join(sorted(keys ^ set(config)))})")
        for key in sorted(keys):
            if not same_value(configs[0][key], config[key]):
                raise FusionError(name, f"members differ in {key} ({configs[0][key]!r} in member 0, "
                                        f"{config[key]!r} in member {i})")


def same_value(a, b):
    """Exact equality of attribute values and graph constants (tensors elementwise, containers
    item by item); objects without a value equality are the same only if they are one object."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and a.device == b.device and torch.equal(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    if isinstance(a, (bool, int, complex, str, bytes, type(None), slice, torch.dtype, torch.device,
                      torch.memory_format, torch.layout)):
        return a == b
    return a is b


class _NodeRef(tuple):
    """A graph node in a compared argument list, by its position in the graph (a tuple subclass, so
    that it equals only another _NodeRef of that position)."""

    def __repr__(self):
        return f"%{self[0]}"


def _signature(node, index):
    """A node's operation and arguments, with the nodes it reads by position."""
    refs = fx.node.map_arg((node.args, node.kwargs), lambda n: _NodeRef((index[n],)))
    return node.op, node.target, refs


def _concat_csr(csrs, col_shift):
    """Stacks the rows of the members' CSRs, shifting member i's columns by i * col_shift."""
    crows, offset = [], 0
    for c in csrs:
        crows.append(c.crow_indices[:-1] + offset)
        offset += c.nnz
    crow = torch.cat([*crows, torch.tensor([offset], dtype=csrs[0].crow_indices.dtype)])
    col = torch.cat([c.col_indices + i * col_shift for i, c in enumerate(csrs)])
    rows = sum(c.shape[0] for c in csrs)
    cols = csrs[0].shape[1] + (len(csrs) - 1) * col_shift
    return CSR(crow.to(csrs[0].crow_indices.device), col, torch.cat([c.values for c in csrs]), (rows, cols))


def _bias(layers):
    return None if layers[0].bias is None else torch.cat([layer.bias.detach() for layer in layers])


def _fuse_conv(layers, name, shared_input):
    """Stacked rows on the shared input, else groups x M; dense members stay a dense conv."""
    first, m = layers[0], len(layers)
    modes = {getattr(layer, "padding_mode", "zeros") for layer in layers}  # SparseConv2d pads zeros
    if len(modes) > 1:
        raise FusionError(name, f"members differ in padding_mode ({', '.join(sorted(modes))})")
    groups = first.groups if shared_input else first.groups * m
    in_channels = first.in_channels if shared_input else first.in_channels * m
    if all(isinstance(layer, nn.Conv2d) for layer in layers):
        fused = nn.Conv2d(in_channels, first.out_channels * m, first.kernel_size, first.stride, first.padding,
                          first.dilation, groups, bias=first.bias is not None, padding_mode=first.padding_mode)
        fused = fused.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
            if first.bias is not None:
                fused.bias.copy_(_bias(layers))
        return fused
    padding = explicit_padding(first) if isinstance(first, nn.Conv2d) else first.padding
    return SparseConv2d(in_channels, first.out_channels * m, first.kernel_size,
                        _concat_csr([layer_csr(layer) for layer in layers], 0), _bias(layers),
                        first.stride, padding, first.dilation, groups)


class _FusedLinearInput(nn.Module):
    """Checks that a fused Linear sees [B, features]: with more dims the member blocks would not be
    the last dimension."""

    def __init__(self, linear, name):
        super().__init__()
        self.linear, self.name = linear, name

    def forward(self, x):
        if x.dim() != 2:
            raise RuntimeError(f"fused ensemble: Linear '{self.name}' got a {x.dim()}-D input; fused execution "
                               "supports Linear layers on [batch, features] only (use fuse=False)")
        return self.linear(x)


def _fuse_linear(layers, name, shared_input):
    """Stacked rows on the shared input, else block-diagonal; dense members on the shared input
    stay a dense Linear."""
    first, m = layers[0], len(layers)
    if shared_input and all(isinstance(layer, nn.Linear) for layer in layers):
        fused = nn.Linear(first.in_features, first.out_features * m, bias=first.bias is not None)
        fused = fused.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([layer.weight for layer in layers]))
            if first.bias is not None:
                fused.bias.copy_(_bias(layers))
    else:
        shift = 0 if shared_input else first.in_features
        in_features = first.in_features if shared_input else first.in_features * m
        fused = SparseLinear(in_features, first.out_features * m,
                             _concat_csr([layer_csr(layer) for layer in layers], shift), _bias(layers))
    return _FusedLinearInput(fused, name)


def _fuse_batchnorm(layers, name):
    first = layers[0]
    fused = copy.deepcopy(first)
    fused.num_features = first.num_features * len(layers)
    states = [layer.state_dict() for layer in layers]
    for key in states[0]:
        if key == "num_batches_tracked":
            continue
        merged = torch.cat([state[key] for state in states])
        target = getattr(fused, key)
        if isinstance(target, nn.Parameter):
            setattr(fused, key, nn.Parameter(merged.clone(), requires_grad=target.requires_grad))
        else:
            setattr(fused, key, merged.clone())
    return fused


def per_member_softmax(x, members, log):
    """(Log-)softmax over the channels of each member, not over all M * C of them."""
    fn = torch.log_softmax if log else torch.softmax
    return fn(x.unflatten(1, (members, -1)), dim=2).flatten(1, 2)


class _PerMemberSoftmax(nn.Module):
    def __init__(self, members, log):
        super().__init__()
        self.members, self.log = members, log

    def forward(self, x):
        return per_member_softmax(x, self.members, self.log)


_SOFTMAX_FUNCTIONS = {F.softmax: False, torch.softmax: False, F.log_softmax: True, torch.log_softmax: True}


def _softmax_dim(node):
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)


# Parameter-free modules that act per channel (or on dims after the channels): run as they are.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                nn.Identity, nn.Dropout, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)
_CHANNELWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.dropout,
                          F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d,
                          operator.add, operator.mul, torch.add, torch.mul}
_CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "mul", "contiguous"}


def _fuse_module(layers, name, shared_input, members):
    """(fused module, needs fused input) for one call_module node."""
    first = layers[0]
    if any(type(layer) is not type(first) and not _both_weight_kind(first, layer) for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        raise FusionError(f"{name} ({'/'.join(kinds)})", "members have different module types here")
    if isinstance(first, (nn.Conv2d, SparseConv2d)):
        return _fuse_conv(layers, name, shared_input and first.groups == 1), first.groups != 1
    if isinstance(first, (nn.Linear, SparseLinear)):
        return _fuse_linear(layers, name, shared_input), False
    if isinstance(first, nn.BatchNorm2d):
        return _fuse_batchnorm(layers, name), True
    if isinstance(first, _CHANNELWISE):
        return copy.deepcopy(first), False
    if isinstance(first, nn.Flatten) and first.start_dim == 1 and first.end_dim == -1:
        return copy.deepcopy(first), False
    if isinstance(first, (nn.Softmax, nn.LogSoftmax)) and first.dim == 1:
        if shared_input:
            return copy.deepcopy(first), False
        return _PerMemberSoftmax(members, isinstance(first, nn.LogSoftmax)), False
    raise FusionError(f"{name} ({type(first).__name__})", "this module type cannot be fused")


def _both_weight_kind(a, b):
    """A member may keep a layer dense that another converted: both are still one conv / linear."""
    convs, linears = (nn.Conv2d, SparseConv2d), (nn.Linear, SparseLinear)
    return (isinstance(a, convs) and isinstance(b, convs)) or (isinstance(a, linears) and isinstance(b, linears))


def _flatten_keeps_members(node):
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    return start == 1 and end == -1


def _check_function(node):
    """Raises FusionError unless the call_function / call_method node acts per member."""
    target = node.target
    if target in (torch.flatten, "flatten") and _flatten_keeps_members(node):
        return
    if node.op == "call_function" and target in _CHANNELWISE_FUNCTIONS:
        return
    if node.op == "call_method" and target in _CHANNELWISE_METHODS:
        return
    raise FusionError(_describe(node), "this operation cannot be fused")


def _describe(node):
    what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    return f"{node.name} ({what})"


# --- graph --------------------------------------------------------------------------------------

def fuse_members(modules):
    """A GraphModule computing every member at once: input as the members take it, output the
    stacked member outputs [M, B, ...]. Raises FusionError naming what cannot be fused."""
    m = len(modules)
    traced = [_trace(module) for module in modules]
    nodes = list(traced[0].graph.nodes)
    signatures = []
    for t in traced:
        index = {n: i for i, n in enumerate(t.graph.nodes)}
        signatures.append([_signature(n, index) for n in t.graph.nodes])
    for i, other in enumerate(signatures[1:], 1):
        if [sig[:2] for sig in other] != [sig[:2] for sig in signatures[0]]:
            raise FusionError(f"member {i}", "its traced graph differs from member 0's (another architecture)")
        for node, ours, theirs in zip(nodes, signatures[0], other):
            if not same_value(ours[2], theirs[2]):
                raise FusionError(_describe(node), f"members call it with different arguments "
                                                   f"({ours[2]!r} in member 0, {theirs[2]!r} in member {i})")
    graph, submodules = fx.Graph(), {}
    env, fused = {}, {}  # new node per old node; whether it carries the members side by side

    def fused_arg(value):
        """Maps an old argument to the new graph, expanding shared tensors to fused ones."""
        new = env[value]
        if fused[value]:
            return new
        return graph.call_function(expand_members, (new, m))

    for node in nodes:
        if node.op == "placeholder":
            env[node], fused[node] = graph.node_copy(node), False
        elif node.op == "get_attr":
            raise FusionError(node.target, "a parameter used outside a module cannot be fused")
        elif node.op == "call_module":
            if len(node.all_input_nodes) != 1 or len(node.args) != 1 or node.kwargs:
                raise FusionError(node.target, "modules with several inputs cannot be fused")
            (x,) = node.all_input_nodes
            layers = [t.get_submodule(node.target) for t in traced]
            _check_same_config(layers, node.target)
            module, needs_fused = _fuse_module(layers, node.target, not fused[x], m)
            submodules[node.target] = module
            arg = fused_arg(x) if needs_fused else env[x]
            carries = fused[x] or needs_fused or isinstance(module, (nn.Conv2d, SparseConv2d, _FusedLinearInput))
            env[node], fused[node] = graph.call_module(node.target, (arg,)), carries
        elif node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS and _softmax_dim(node) == 1:
            (x,) = node.all_input_nodes
            if fused[x]:
                call = (per_member_softmax, (env[x], m, _SOFTMAX_FUNCTIONS[node.target]))
                env[node] = graph.call_function(*call)
            else:
                env[node] = graph.node_copy(node, env.__getitem__)
            fused[node] = fused[x]
        elif node.op in ("call_function", "call_method"):
            _check_function(node)
            # Mixed shared and fused operands (a residual add of the input) expand the shared ones.
            any_fused = any(fused[a] for a in node.all_input_nodes)
            env[node] = graph.node_copy(node, fused_arg if any_fused else env.__getitem__)
            fused[node] = any_fused
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise FusionError("output", "models returning several tensors cannot be fused")
            graph.output(graph.call_function(split_members, (fused_arg(out), m)))
    return fx.GraphModule(submodules, graph, class_name="FusedEnsemble")

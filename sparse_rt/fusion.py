"""Graph-level fusion: the dense work around the sparse layers folded into them.

A converted model still runs everything that is not a sparse Linear/Conv2d op by op in eager
PyTorch. At batch 8 on a CPU, ResNet-50's BatchNorms and ReLUs alone are each a full pass over
every activation, as costly together as the sparse convolutions around them. `fuse` traces the model
with torch.fx and rewrites its graph:

- BatchNorm2d after a convolution (sparse or dense), in eval mode, is folded into it: each output
  channel's weights are scaled by gamma / sqrt(var + eps) and its bias becomes
  beta + (bias - mean) * scale. A sparse weight keeps its sparsity pattern (rows are scaled).
- Dropout modules (identities in eval mode) are dropped, so that the patterns below see through them.
- A skip connection added to a sparse convolution's output (`conv(x) + identity`, ResNet's
  residual) is added in the kernel's epilogue (`conv(x, residual=identity)`). Where both summands are
  such convolutions (a bottleneck block's last layer and its downsample), the pointwise stride-1 one
  takes the sum, else the first in the graph (ResNet-50, whose blocks compute the downsample first,
  at batch 8 against the downsample taking it, in one process: 1.026x at 95% and 1.019x at 90% with
  pointwise pairs, where the last layer's output then chains with the next block's first (below);
  1.035x at 95% with bottleneck blocks; 0.99-1.01x at batch 1; the same values, a sum being
  commutative). Linear layers keep
  their sum (BERT's `dense(h) + input`): fused, BERT-base measured no faster (batch 1: within 1%;
  batch 8: -20% to +12% run to run, benchmarks/results/engines-2026-12-02-*.json).
- ReLU after a sparse layer (or after such a sum) runs in the layer's kernel epilogue
  (`layer.relu = True`).
- MaxPool2d on the CPU pools a channels_last copy of its input (ChannelsLastMaxPool2d): PyTorch's
  CPU max pooling of an NCHW tensor is about 10x slower than of a channels_last one (ResNet-50's
  stem pool, 2 threads: batch 1 5.1 ms vs 0.5 ms; batch 8 38 ms vs 12 ms with both layout copies).
  For fp32 without dilation or ceil mode that is sparse_rt's max_pool2d op: one pass from channels_last
  to NCHW, no argmax written (the whole fused ResNet-50 1.05x at batch 1, 1.01x at batch 8).
  A dense Conv2d whose output goes only to such a pool (directly or through a ReLU) convolves a
  channels_last copy of its input (ChannelsLastConv2d): its output is then channels_last already,
  and the layout copy is of the conv's input rather than of its 16x larger output (ResNet-50's stem,
  conv + ReLU + pool, AMD EPYC, 2 threads: batch 8 31 ms -> 7 ms; batch 1 1.3 -> 0.9 ms).
- A ResNet bottleneck block's three CSR SparseConv2d layers (1x1; 3x3 with stride 1 and padding 1;
  1x1 with the skip connection; one group each, each read by the next alone) become one call of
  `bottleneck_block`: on fp32 CPU input the csr_bottleneck_block op, which, where the block's
  activations leave the cache, runs it a band of output rows of one image at a time: the first
  layer's output for the band (and the row either side, kept from the band above where the thread
  ran it) and the 3x3 layer's stay in the core's L2 instead of passing through memory; elsewhere the
  layers one after the other, each reading its packing (within fp32 rounding of them: the sums are
  grouped in other tiles at the bands' edges). ResNet-50 at batch 8 against the same model fused
  with pairs (below) instead, Intel Xeon, 2 threads, in one process: 1.058x at 95%, 1.024x at 90%;
  its first stage 21.8 -> 17.3 ms at 95% (torch.profiler); stages 3 and 4, whose activations stay in
  the cache, run apart.
  Where such a block's pointwise stride-1 downsample took its sum (ResNet's first stage, whose
  downsample comes first in the graph), the downsample joins the call as the block's shortcut: in
  bands its output for the band goes into the core's cache and the last layer's sums are added to it
  there, so that neither the block's output nor the downsample's input passes through memory again
  (the same values bit for bit where the layers run apart, within fp32 rounding in bands).
  ResNet-50's first block at batch 8, 90%, per node in the model's order (AMD EPYC Zen 4, 2 threads,
  alternating): block and downsample 10.2-10.8 ms -> 7.6-8.6; the whole model at batch 8 0.99-1.06x in
  ten runs (captured and fused, 90% and 95%, old and new in one process: about 1-2%), batch 1 level.
- A pointwise CSR SparseConv2d (1x1, stride 1, unpadded, one group) whose output another such layer
  reads, where no bottleneck block took either (a ResNet block's output and the next block's first
  layer; MobileNetV2's projection
  and the next expansion) runs with it as one call of `pointwise_conv_pair`: on fp32 CPU input the
  csr_pointwise_conv_pair op, which, where the first output leaves the cache, takes a panel of 64
  pixels through both layers, so that the second reads it from L1/L2 while it is streamed out (the
  same values bit for bit; ResNet-50 90%, Intel Xeon, 2 threads, in one process: 1.03-1.045x at
  batch 8, 1.00x at batch 1, where no such output leaves the cache); elsewhere the layers one after
  the other.
- Attention written out as `matmul(softmax(matmul(q, k.transpose(-1, -2)) * scale), v)` (BERT's,
  with the softmax over the last dimension and a constant scale) becomes one call of `attention`:
  sparse_rt's scaled_dot_product_attention op for fp32 4-D CPU tensors (no score tensor stored, the
  output laid out so that merging the heads back is free; within 1e-5 relative of the written-out
  ops, not bit for bit), else F.scaled_dot_product_attention. 8 heads of 64, interleaved
  (benchmarks/bench_fused_ops.py, results/fused-ops-2026-12-03-attention.json): 128 tokens 1.95x the
  written-out ops and 2.27x PyTorch's flash attention; 1024 tokens 5.36x and 1.60x.
- Two CSR sparse linear layers with a GELU (exact or tanh) or the first one's ReLU between them (a
  transformer's feed-forward block) become one call of `sparse_mlp`, which runs the csr_mlp op on
  the CPU: 64 tokens at a time, the first layer's output for them stays in cache as the second's
  input, and is never stored as a [tokens, hidden] matrix, packed back into panels or passed over
  for the GELU on its own: the GELU (exact or tanh) runs in the first layer's epilogue, within
  3e-7 |h| of torch's, so the values agree with the layers run one after the other to rounding
  (1e-6 relative in tests/test_fusion.py; the ReLU pair bit for bit). Activations other than fp32 CPU
  ones, and ONNX exports, run the layers one after the other.
- Sparse linear layers reading the same input (attention's query, key and value projections) run
  as one csr_linears call (`sparse_linears`): the input is read and packed into panels once, and
  all their rows are split over the threads in one parallel region (the same kernels, so the same
  values bit for bit).
  Both against the calls they replace on DLMC Transformer layers at 90%, interleaved
  (benchmarks/bench_fused_ops.py, results/fused-ops-2026-12-03.json): feed-forward 1.04-1.78x at
  128 tokens, 1.39-3.03x at 1024; query/key/value 1.12-1.36x and 1.20-1.25x.
- A sum and the nn.LayerNorm over its last dimension after it (BERT's `LayerNorm(dense(h) + input)`)
  become one call of `add_layer_norm`: the add_layer_norm op on fp32 CPU tensors of one shape when no
  gradient is wanted, which writes each row's sum into its output row and normalises it there while
  it is in L1 (within 1e-5 relative of the two ops). The sum is not read elsewhere.

A pattern is rewritten only where it is safe: the layer is called once in the graph and its output
feeds nothing but the BatchNorm / sum / ReLU. A residual that does not have the output's shape and
dtype at run time (a broadcasting sum) is added after the kernel, as the sum did. (torch.fx traces
`out += x` as `out + x`: the in-place sums it records are explicit `add_` calls.) The result is a
torch.fx.GraphModule holding the same submodules under the same names (less the folded
BatchNorms), so its state_dict, .srt files and ONNX export work as before. Folding changes
rounding only (fp32: within 1e-5 relative of the unfused model). The rewrite depends on the
architecture alone, so a fused model's .srt file is loaded by fusing the rebuilt architecture
again (`fold_values=False`) before its tensors are put in.

SplitBatch is no rewrite: it runs a fused CNN's first stages in parts of a large batch (see its
docstring); SparseModel's forward uses it once the model is fused.
"""

import operator
from dataclasses import dataclass, field, fields
from typing import Collection, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.utils import _pair

from . import ops
from .machine import cache_bytes
from .nn import SparseConv2d, SparseLinear
from .nn._sparse_weight import SparseWeightModule


class FusionError(ValueError):
    """The model cannot be fused; the message says why (which module, which step)."""


@dataclass
class FusionReport:
    """What `fuse` rewrote: (batchnorm, convolution) pairs folded and layers given a ReLU epilogue."""

    folded_batchnorms: List[Tuple[str, str]] = field(default_factory=list)
    fused_residuals: List[str] = field(default_factory=list)
    fused_relus: List[str] = field(default_factory=list)
    dropped_dropouts: List[str] = field(default_factory=list)
    channels_last_pools: List[str] = field(default_factory=list)
    channels_last_convs: List[str] = field(default_factory=list)
    fused_attentions: List[str] = field(default_factory=list)
    fused_mlps: List[Tuple[str, str]] = field(default_factory=list)
    shared_input_linears: List[Tuple[str, ...]] = field(default_factory=list)
    fused_add_layer_norms: List[str] = field(default_factory=list)
    pointwise_conv_pairs: List[Tuple[str, str]] = field(default_factory=list)
    bottleneck_blocks: List[Tuple[str, str, str]] = field(default_factory=list)
    block_shortcuts: List[Tuple[str, str]] = field(default_factory=list)

    def to_json(self):
        return {f.name: [list(item) if isinstance(item, tuple) else item for item in getattr(self, f.name)]
                for f in fields(self)}

    @classmethod
    def from_json(cls, record):
        """The report saved by to_json; fields an older file lacks are empty."""
        return cls(*([tuple(item) if isinstance(item, list) else item for item in record.get(f.name, [])]
                     for f in fields(cls)))

    def __add__(self, other):
        return FusionReport(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __str__(self):
        return (f"{len(self.folded_batchnorms)} BatchNorm(s) folded into convolutions, "
                f"{len(self.fused_residuals)} residual sum(s) and {len(self.fused_relus)} ReLU(s) "
                f"fused into sparse kernels, {len(self.channels_last_pools)} max pool(s) and "
                f"{len(self.channels_last_convs)} dense convolution(s) run channels_last, "
                f"{len(self.fused_attentions)} attention(s) in one kernel, "
                f"{len(self.fused_mlps)} pair(s) of sparse linear layers in one, "
                f"{len(self.shared_input_linears)} group(s) of sparse linear layers reading one input in one call, "
                f"{len(self.fused_add_layer_norms)} sum(s) and LayerNorm(s) in one pass, "
                f"{len(self.pointwise_conv_pairs)} pair(s) of pointwise sparse convolutions in one, "
                f"{len(self.bottleneck_blocks)} bottleneck block(s) of sparse convolutions in one, "
                f"{len(self.block_shortcuts)} of them with their pointwise shortcut")


# FusionReport fields of rewrites that change no tensor a file holds (layouts, attention kernels).
TENSOR_FREE_REWRITES = ("channels_last_pools", "channels_last_convs", "fused_attentions", "fused_mlps",
                        "shared_input_linears", "fused_add_layer_norms", "pointwise_conv_pairs", "bottleneck_blocks",
                        "block_shortcuts")


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that pools a channels_last copy of a CPU batch and returns it NCHW again: the
    same values (a maximum is exact), in a tenth of the time for large planes. sparse_rt's max_pool2d op
    does it in one pass for fp32 without dilation or ceil mode when no gradient is wanted (PyTorch's
    pooling also writes every output's argmax, and the NCHW copy is a pass of its own: ResNet-50's
    stem pool, AMD EPYC Zen 4, 2 threads, batch 8 3.7-3.9 ms, batch 1 0.33-0.37 ms with the copy);
    else, and in ONNX exports, PyTorch's pooling. Anything else (indices, unbatched input, other
    devices) is pooled as given."""

    def forward(self, input):
        if self.return_indices or input.dim() != 4 or input.device.type != "cpu":
            return super().forward(input)
        stride = self.stride if self.stride else self.kernel_size
        if (ops.HAS_COMPILED_OPS and input.dtype == torch.float32 and not self.ceil_mode
                and _pair(self.dilation) == (1, 1) and not torch.onnx.is_in_onnx_export()
                and not (torch.is_grad_enabled() and input.requires_grad)):
            return ops.max_pool2d(input, _pair(self.kernel_size), _pair(stride), _pair(self.padding))
        return super().forward(input.contiguous(memory_format=torch.channels_last)).contiguous()


class ChannelsLastConv2d(nn.Conv2d):
    """nn.Conv2d that convolves a channels_last copy of a 4-D CPU input, so that its output is
    channels_last (the same values up to the convolution algorithm's rounding); other inputs are
    convolved as given. fuse() puts it before ChannelsLastMaxPool2d."""

    def forward(self, input):
        if input.dim() == 4 and input.device.type == "cpu":
            input = input.contiguous(memory_format=torch.channels_last)
        return super().forward(input)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with sparse_rt's layers as leaves: they are what the passes match. The
    functions the passes put in the graph stay calls when a fused module's code is traced again (as
    unpickling a GraphModule does, with its tracer's class)."""

    def __init__(self):
        super().__init__(autowrap_functions=(attention, add_layer_norm, sparse_mlp, sparse_linears,
                                             pointwise_conv_pair, bottleneck_block))

    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, SparseWeightModule) or super().is_leaf_module(module, qualified_name)


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")
# Sums of two tensors; the in-place ones write into their first operand.
_ADD_FUNCTIONS = (operator.add, torch.add)
_INPLACE_ADD_FUNCTIONS = (operator.iadd,)
_ADD_METHODS = ("add",)
_INPLACE_ADD_METHODS = ("add_",)


def fuse(module: nn.Module, *, fold_values: bool = True,
         residual_layers: Optional[Collection[str]] = None) -> Tuple[fx.GraphModule, FusionReport]:
    """(graph module, report): `module` traced, BatchNorms folded and ReLUs fused (see the module
    docstring). `module` must be in eval mode; its layers are shared with the result, which is the
    model to use from then on. With fold_values=False the graph is rewritten the same way but no
    weight is changed (a folded convolution without a bias gets a zero one): the structure that a
    fused model's saved tensors are loaded into. `residual_layers`, where given, names the
    convolutions that take their skip connections, as a saved model's report recorded them, in place
    of the rule that picks one of two summands (a file written before that rule may differ)."""
    if module.training:
        raise FusionError("fuse: the model is in training mode, where BatchNorm uses batch statistics "
                          "and cannot be folded; call .eval() first")
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # fx raises many types for code it cannot trace (data-dependent control flow, ...)
        raise FusionError(f"fuse: torch.fx cannot trace {type(module).__name__}: {type(e).__name__}: {e}") from None
    for node in graph.nodes:
        # An annotation written as a string (`from __future__ import annotations`) would be a global
        # of the generated code that pickling cannot name.
        if isinstance(node.type, str):
            node.type = None
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    calls = _call_counts(gm.graph)
    report = FusionReport()
    for name, pool in list(gm.named_modules()):
        if type(pool) is nn.MaxPool2d and not pool.return_indices:
            gm.set_submodule(name, _channels_last_pool(pool))
            report.channels_last_pools.append(name)
    for node in list(gm.graph.nodes):
        if _module_of(gm, node, nn.Dropout) is not None and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            report.dropped_dropouts.append(node.target)
    for node in list(gm.graph.nodes):
        pattern = _attention_pattern(gm, node)
        if pattern is None:
            continue
        (q, k, v, scale), replaced = pattern
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_function(attention, (q, k, v, scale))
        node.replace_all_uses_with(fused)
        for old in replaced:  # from the last op back: each is unused once its reader is gone
            gm.graph.erase_node(old)
        softmax = replaced[1]
        report.fused_attentions.append(softmax.target if softmax.op == "call_module" else softmax.name)
    for node in list(gm.graph.nodes):
        bn = _sole_user(node)
        conv = _module_of(gm, node, (nn.Conv2d, SparseConv2d))
        if (conv is None or calls[node.target] != 1 or getattr(conv, "relu", False)
                or _module_of(gm, bn, nn.BatchNorm2d) is None or calls[bn.target] != 1
                or not _foldable(gm.get_submodule(bn.target))):
            continue
        _fold_batchnorm(conv, gm.get_submodule(bn.target), fold_values)
        bn.replace_all_uses_with(node)
        gm.graph.erase_node(bn)
        report.folded_batchnorms.append((bn.target, node.target))
    for node in list(gm.graph.nodes):
        sum_ = _sum_it_may_take(gm, node, calls)
        if sum_ is None or not _takes_the_sum(gm, node, sum_[1], calls, residual_layers):
            continue
        add, residual = sum_
        layer = gm.get_submodule(node.target)
        add.prepend(node)  # the layer now reads `residual`, which may be computed after it was
        node.kwargs = {**node.kwargs, "residual": residual}
        layer.adds_residual = True
        add.replace_all_uses_with(node)
        gm.graph.erase_node(add)
        report.fused_residuals.append(node.target)
    for node in list(gm.graph.nodes):
        layer = _module_of(gm, node, SparseWeightModule)
        relu = _sole_user(node)
        if layer is None or calls[node.target] != 1 or layer.relu or not _is_relu_of(gm, relu, node):
            continue
        layer.relu = True
        relu.replace_all_uses_with(node)
        gm.graph.erase_node(relu)
        report.fused_relus.append(node.target)
    for node in list(gm.graph.nodes):
        block = _bottleneck_block_pattern(gm, node, calls)
        if block is None:
            continue
        with gm.graph.inserting_before(node):
            layers = [gm.graph.get_attr(n.target) for n in (*block, node)]
            fused = gm.graph.call_function(bottleneck_block, (*layers, block[0].args[0], node.kwargs.get("residual")))
        node.replace_all_uses_with(fused)
        for old in (node, block[1], block[0]):
            gm.graph.erase_node(old)
        report.bottleneck_blocks.append((block[0].target, block[1].target, node.target))
    for node in list(gm.graph.nodes):
        block = _block_before_shortcut(gm, node, calls)
        if block is None:
            continue
        with gm.graph.inserting_before(node):
            shortcut = gm.graph.get_attr(node.target)
            fused = gm.graph.call_function(bottleneck_block, (*block.args[:4], None, shortcut))
        report.block_shortcuts.append((block.args[2].target, node.target))
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        gm.graph.erase_node(block)
    paired = set()
    for node in list(gm.graph.nodes):
        first = _pointwise_conv_pair_pattern(gm, node, calls)
        if first is None or first in paired:
            continue
        paired.add(first)
        with gm.graph.inserting_before(first):
            layers = [gm.graph.get_attr(n.target) for n in (first, node)]
            pair = gm.graph.call_function(pointwise_conv_pair, (*layers, first.args[0], first.kwargs.get("residual")))
            outputs = [gm.graph.call_function(operator.getitem, (pair, i)) for i in range(2)]
        first.replace_all_uses_with(outputs[0])
        node.replace_all_uses_with(outputs[1])
        gm.graph.erase_node(node)
        gm.graph.erase_node(first)
        report.pointwise_conv_pairs.append((first.target, node.target))
    for node in list(gm.graph.nodes):
        mlp = _mlp_pattern(gm, node, calls)
        if mlp is None:
            continue
        first, activation, replaced = mlp
        with gm.graph.inserting_before(node):
            layers = [gm.graph.get_attr(n.target) for n in (first, node)]
            fused = gm.graph.call_function(sparse_mlp, (*layers, activation, first.args[0]))
        node.replace_all_uses_with(fused)
        for old in replaced:
            gm.graph.erase_node(old)
        report.fused_mlps.append((first.target, node.target))
    for group in _shared_input_groups(gm, calls):
        with gm.graph.inserting_before(group[0]):
            layers = tuple(gm.graph.get_attr(n.target) for n in group)
            fused = gm.graph.call_function(sparse_linears, (layers, group[0].args[0]))
            outputs = [gm.graph.call_function(operator.getitem, (fused, i)) for i in range(len(group))]
        for node, output in zip(group, outputs):
            node.replace_all_uses_with(output)
            gm.graph.erase_node(node)
        report.shared_input_linears.append(tuple(n.target for n in group))
    for node in list(gm.graph.nodes):
        summands = _add_layer_norm_pattern(gm, node)
        if summands is None:
            continue
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_function(add_layer_norm, (gm.graph.get_attr(node.target), *summands))
        add = node.args[0]
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        gm.graph.erase_node(add)
        report.fused_add_layer_norms.append(node.target)
    for node in list(gm.graph.nodes):
        conv = _dense_conv_before_pool(gm, node, calls)
        if conv is not None:
            gm.set_submodule(conv.target, _channels_last_conv(gm.get_submodule(conv.target)))
            report.channels_last_convs.append(conv.target)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, report


def attention(query, key, value, scale):
    """softmax(scale * query @ key^T) @ value, the fused attention: sparse_rt's scaled_dot_product_attention
    op on fp32 CPU tensors of the 4-D shapes it takes, else F.scaled_dot_product_attention, which is also what
    an ONNX export sees and what runs when gradients are wanted (the op has none)."""
    if (ops.HAS_COMPILED_OPS and query.device.type == "cpu" and not torch.onnx.is_in_onnx_export()
            and all(t.dtype == torch.float32 and t.dim() == 4 and not t.requires_grad for t in (query, key, value))
            and key.shape == value.shape and key.shape[2] >= 1
            and (query.shape[0], query.shape[1], query.shape[3]) == (key.shape[0], key.shape[1], key.shape[3])):
        return ops.scaled_dot_product_attention(query, key, value, scale)
    return F.scaled_dot_product_attention(query, key, value, scale=scale)


def add_layer_norm(layer_norm, input, residual):
    """layer_norm(input + residual) for an nn.LayerNorm over the last dimension: sparse_rt's add_layer_norm
    op, one pass per row, on fp32 CPU tensors of one shape when no gradient is wanted; else the sum and the
    module, which is also what an ONNX export sees (an Add and a LayerNormalization)."""
    tensors = (input, residual, layer_norm.weight, layer_norm.bias)
    if (ops.HAS_COMPILED_OPS and input.is_cpu and not torch.onnx.is_in_onnx_export()
            and isinstance(residual, torch.Tensor) and input.shape == residual.shape
            and tuple(layer_norm.normalized_shape) == tuple(input.shape[-1:])
            and all(t is None or t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))):
        return ops.add_layer_norm(input, residual, layer_norm.weight, layer_norm.bias, layer_norm.eps)
    return layer_norm(input + residual)


def sparse_mlp(first, second, activation, input):
    """second(act(first(input))) for the SparseLinear layers `first` and `second` (act: 'relu', which
    `first` applies itself, 'gelu' or 'gelu_tanh'): one csr_mlp call where it takes the layers (fp32
    activations on the CPU, both weights CSR of one dtype; its GELU, in the first layer's epilogue,
    within 3e-7 |h| of torch's), else the layers one after the other: the latter is what an ONNX
    export sees, and what runs once the layers are replaced (the portable export's twins)."""
    if input.dtype == torch.float32 and _csr_ops_take(input, (first, second)):
        # The second layer's input (the first's output) has `input`'s rows.
        return ops.csr_mlp(input, *first._weight_tensors(), *second._weight_tensors(), first.in_features, activation,
                           None, first.packing(input), second.packing(input))
    hidden = first(input)
    if activation != "relu":
        hidden = F.gelu(hidden, approximate="tanh" if activation == "gelu_tanh" else "none")
    return second(hidden)


def sparse_linears(layers, input):
    """[layer(input) for layer in layers] for SparseLinear layers: one csr_linears call, which reads
    and packs the input once, where every layer is CSR without a ReLU, their values share a dtype
    and the input is on the CPU (the same kernels, so the same values bit for bit); else, as in an
    ONNX export, layer by layer."""
    if _csr_ops_take(input, layers) and not any(layer.relu for layer in layers):
        crow, col, values, bias = zip(*(layer._weight_tensors() for layer in layers))
        return ops.csr_linears(input, list(crow), list(col), list(values), list(bias), layers[0].in_features,
                               [layer.packing(input) for layer in layers])
    return [layer(input) for layer in layers]


def pointwise_conv_pair(first, second, input, residual=None):
    """(y, second(y)) with y = first(input, residual) for pointwise (1x1, stride 1, unpadded, one group)
    CSR SparseConv2d layers: one csr_pointwise_conv_pair call where it takes them (an fp32 CPU input,
    both weights' values of one dtype, a residual of y's shape and dtype or none), which runs both
    layers a panel of pixels at a time so that the second reads y from cache (the same values bit for
    bit); else the layers one after the other, as an ONNX export sees them."""
    if (input.dtype == torch.float32 and _conv_ops_take(input, (first, second))
            and (residual is None or (residual.shape == first.output_shape(input) and residual.dtype == input.dtype
                                      and residual.device == input.device))):
        crow1, col1, values1, bias1 = first._weight_tensors()
        crow2, col2, values2, bias2 = second._weight_tensors()
        return ops.csr_pointwise_conv_pair(input, crow1, col1, values1, bias1, first.in_channels, first.relu, residual,
                                           first.packing(input), crow2, col2, values2, bias2, second.relu,
                                           second.packing(input))
    middle = first(input) if residual is None else first(input, residual)
    return middle, second(middle)


def bottleneck_block(first, second, last, input, residual=None, shortcut=None):
    """last(second(first(input)), residual) for the CSR SparseConv2d layers of a bottleneck block (1x1;
    3x3 with stride 1, padding 1; 1x1; one group each), or with a `shortcut` layer (a pointwise one on
    `input`, taking the sum) shortcut(input, last(second(first(input)))): one csr_bottleneck_block call
    where it takes them (an fp32 CPU input, the weights' values of one dtype, a residual of the output's
    shape and dtype or none; `last` without a ReLU beside a shortcut), which runs the block a band of
    output rows at a time where its activations leave the cache, the shortcut's output summed in the
    band, and elsewhere each layer with its packing (PackedWeight); else the layers one after the other,
    as an ONNX export sees them."""
    layers = (first, second, last) if shortcut is None else (first, second, last, shortcut)
    if (input.dtype == torch.float32 and _conv_ops_take(input, layers)
            and (shortcut is None or (residual is None and not last.relu))
            and (residual is None or (residual.shape == (input.shape[0], last.out_channels, *input.shape[2:])
                                      and residual.dtype == input.dtype and residual.device == input.device))):
        w1, w2, w3 = (layer._weight_tensors() for layer in (first, second, last))
        w4 = (None,) * 4 if shortcut is None else shortcut._weight_tensors()
        relu = last.relu if shortcut is None else shortcut.relu
        # Each layer's output has the input's pixels: its packing for `input` is its packing for its own input.
        return ops.csr_bottleneck_block(input, *w1, first.in_channels, first.relu, *w2, second.relu, *w3, relu,
                                        residual, *w4, *(None if layer is None else layer.packing(input)
                                                         for layer in (first, second, last, shortcut)))
    middle = second(first(input))
    output = last(middle) if residual is None else last(middle, residual)
    return output if shortcut is None else shortcut(input, output)


def _conv_ops_take(input, layers):
    """Whether the fused CPU ops take the CSR SparseConv2d `layers` on `input`: compiled ops, a 4-D CPU
    input outside an ONNX export, values of one dtype."""
    return (ops.HAS_COMPILED_OPS and input.is_cpu and input.dim() == 4 and not torch.onnx.is_in_onnx_export()
            and all(layer.format == "csr" for layer in layers) and len({layer.values.dtype for layer in layers}) == 1)


def _pointwise_conv_pair_pattern(gm, node, calls):
    """The node of the first layer when `node` calls a pointwise CSR SparseConv2d on that layer's output,
    both pointwise (1x1, stride 1, unpadded, one group), each called once, the second with one argument
    and the first with its input and at most a residual; the first's output may have other readers.
    Else None."""
    second = _pointwise_csr_conv(gm, node, calls)
    if second is None or node.kwargs:
        return None
    first = node.args[0]
    if _pointwise_csr_conv(gm, first, calls) is None or not set(first.kwargs) <= {"residual"}:
        return None
    return first


def _bottleneck_block_pattern(gm, node, calls):
    """(first, second) nodes when `node` calls a pointwise CSR SparseConv2d (at most with a residual) on
    the output of a 3x3 one with stride 1 and padding 1, which reads that of a pointwise one (one group
    each, no dilation), each called once, the inner two read by their successor alone. Else None."""
    if _pointwise_csr_conv(gm, node, calls) is None or not set(node.kwargs) <= {"residual"}:
        return None
    second = node.args[0]
    layer = _module_of(gm, second, SparseConv2d) if isinstance(second, fx.Node) else None
    if (layer is None or layer.format != "csr" or calls[second.target] != 1 or len(second.args) != 1
            or second.kwargs or _sole_user(second) is not node or layer.kernel_size != (3, 3)
            or layer.stride != (1, 1) or layer.padding != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1):
        return None
    first = second.args[0]
    if _pointwise_csr_conv(gm, first, calls) is None or first.kwargs or _sole_user(first) is not second:
        return None
    return first, second


def _block_before_shortcut(gm, node, calls):
    """The bottleneck_block node (without a residual or shortcut, its last layer without a ReLU) when
    `node` calls a pointwise CSR SparseConv2d on that block's input with the block's output as its
    residual, the block's output read by it alone (a stage's first block whose downsample is pointwise
    and took the sum: ResNet-50's first). Else None."""
    if _pointwise_csr_conv(gm, node, calls) is None or set(node.kwargs) != {"residual"}:
        return None
    block = node.kwargs["residual"]
    if (not isinstance(block, fx.Node) or block.op != "call_function" or block.target is not bottleneck_block
            or len(block.args) != 5 or block.kwargs or block.args[4] is not None or _sole_user(block) is not node
            or block.args[3] is not node.args[0] or gm.get_submodule(block.args[2].target).relu):
        return None
    return block


def _pointwise_csr_conv(gm, node, calls):
    """The CSR SparseConv2d `node` calls on one argument, 1x1, stride 1, unpadded, of one group, when it is called
    nowhere else; else None."""
    layer = _module_of(gm, node, SparseConv2d) if isinstance(node, fx.Node) else None
    if (layer is None or layer.format != "csr" or calls[node.target] != 1 or len(node.args) != 1
            or layer.kernel_size != (1, 1) or layer.stride != (1, 1) or layer.padding != (0, 0) or layer.groups != 1):
        return None
    return layer


def _csr_ops_take(input, layers):
    """Whether the fused CPU ops take `layers` on `input`: compiled ops, a CPU input outside an ONNX
    export, and CSR SparseLinear layers whose values share a dtype."""
    return (ops.HAS_COMPILED_OPS and input.is_cpu and not torch.onnx.is_in_onnx_export()
            and all(isinstance(layer, SparseLinear) and layer.format == "csr" for layer in layers)
            and len({layer.values.dtype for layer in layers}) == 1)


def _plain_csr_layer(gm, node, calls):
    """The CSR SparseLinear `node` calls with one argument, when it is called nowhere else; else None."""
    layer = _module_of(gm, node, SparseLinear)
    if layer is None or layer.format != "csr" or calls[node.target] != 1 or len(node.args) != 1 or node.kwargs:
        return None
    return layer


def _shared_input_groups(gm, calls):
    """Lists, in graph order, of the nodes of two or more CSR SparseLinear layers without a ReLU
    that read one input node and nothing else, each layer called once, their values of one dtype."""
    groups = {}
    for node in gm.graph.nodes:
        layer = _plain_csr_layer(gm, node, calls)
        if layer is not None and not layer.relu and isinstance(node.args[0], fx.Node):
            groups.setdefault((node.args[0], layer.values.dtype), []).append(node)
    return [group for group in groups.values() if len(group) > 1]


def _mlp_pattern(gm, node, calls):
    """(first layer's node, activation, the nodes to erase from `node` back) when `node` calls a CSR
    SparseLinear on act(first(x)), with `first` one too and act a GELU after it or the ReLU in its
    epilogue, each intermediate read by the next op only and neither layer called elsewhere
    or with a residual; else None."""
    second = _plain_csr_layer(gm, node, calls)
    if second is None or second.relu:
        return None
    source = node.args[0]
    gelu = _gelu_kind(gm, source) if _sole_user(source) is node else None
    first = source.args[0] if gelu else source
    first_layer = _plain_csr_layer(gm, first, calls) if isinstance(first, fx.Node) else None
    if first_layer is None or _sole_user(first) is not (source if gelu else node):
        return None
    if bool(gelu) == first_layer.relu:  # a GELU after a ReLU, or no activation at all
        return None
    return first, gelu or "relu", [node, source, first] if gelu else [node, first]


def _add_layer_norm_pattern(gm, node):
    """(a, b) when `node` calls an nn.LayerNorm over one (the last) dimension on a + b, that sum read by
    nothing else; else None."""
    layer_norm = _module_of(gm, node, nn.LayerNorm)
    if layer_norm is None or len(layer_norm.normalized_shape) != 1 or len(node.args) != 1 or node.kwargs:
        return None
    add = node.args[0]
    if not (isinstance(add, fx.Node) and _sole_user(add) is node and len(add.args) == 2 and not add.kwargs
            and (add.op == "call_function" and add.target in _ADD_FUNCTIONS
                 or add.op == "call_method" and add.target in _ADD_METHODS)
            and all(isinstance(a, fx.Node) for a in add.args)):
        return None
    return add.args


def _gelu_kind(gm, node):
    """'gelu' or 'gelu_tanh' when `node` computes the exact or tanh GELU of its one argument; else None."""
    if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.GELU and len(node.args) == 1:
        approximate = gm.get_submodule(node.target).approximate
    elif (node.op == "call_function" and node.target is F.gelu and len(node.args) == 1
          and set(node.kwargs) <= {"approximate"}):
        approximate = node.kwargs.get("approximate", "none")
    else:
        return None
    return {"none": "gelu", "tanh": "gelu_tanh"}.get(approximate)


def _channels_last_pool(pool):
    return ChannelsLastMaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                 ceil_mode=pool.ceil_mode)


def _channels_last_conv(conv):
    """`conv` as a ChannelsLastConv2d: the same parameters, buffers and settings (shared)."""
    channels_last = ChannelsLastConv2d.__new__(ChannelsLastConv2d)
    channels_last.__dict__.update(conv.__dict__)
    return channels_last


def _dense_conv_before_pool(gm, pool, calls):
    """The node of the dense nn.Conv2d whose output reaches the ChannelsLastMaxPool2d call `pool`
    and nothing else, directly or through a ReLU; else None."""
    if _module_of(gm, pool, ChannelsLastMaxPool2d) is None or not pool.args:
        return None
    source = pool.args[0]
    if isinstance(source, fx.Node) and _sole_user(source) is pool and source.args \
            and _is_relu_of(gm, source, source.args[0]):
        source = source.args[0]
    conv = _module_of(gm, source, nn.Conv2d)
    if type(conv) is not nn.Conv2d or calls[source.target] != 1 or len(source.users) != 1:
        return None
    return source


def _attention_pattern(gm, node):
    """((q, k, v, scale), the pattern's nodes from `node` back) when `node` computes
    matmul(softmax(matmul(q, k.transpose(-1, -2)) * scale, dim=-1), v), every intermediate read by the
    next op only and scale a number; else None."""
    if not _is_matmul(node):
        return None
    probs, v = node.args
    if not (_sole_user(probs) is node and _is_last_dim_softmax(gm, probs)):
        return None
    scaled = probs.args[0]
    if not (isinstance(scaled, fx.Node) and _sole_user(scaled) is probs and scaled.op == "call_function"
            and scaled.target in (operator.mul, torch.mul) and len(scaled.args) == 2 and not scaled.kwargs):
        return None
    scores, scale = scaled.args if isinstance(scaled.args[0], fx.Node) else scaled.args[::-1]
    if not (isinstance(scale, (int, float)) and _sole_user(scores) is scaled and _is_matmul(scores)):
        return None
    q, k_transposed = scores.args
    if not (_sole_user(k_transposed) is scores and k_transposed.op == "call_method"
            and k_transposed.target == "transpose" and not k_transposed.kwargs
            and sorted(k_transposed.args[1:]) == [-2, -1]):
        return None
    return (q, k_transposed.args[0], v, float(scale)), (node, probs, scaled, scores, k_transposed)


def _is_matmul(node):
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target in (torch.matmul, operator.matmul)
            and len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args))


def _is_last_dim_softmax(gm, node):
    """Whether `node` is softmax(x, dim=-1): an nn.Softmax, F.softmax / torch.softmax or x.softmax."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return type(module) is nn.Softmax and module.dim == -1 and len(node.args) == 1 and not node.kwargs
    if (node.op == "call_function" and node.target in (F.softmax, torch.softmax)
            or node.op == "call_method" and node.target == "softmax"):
        arguments = {**dict(zip(("input", "dim"), node.args)), **node.kwargs}
        # F.softmax passes its defaults on when traced: _stacklevel (a warning's) and dtype=None.
        arguments.pop("_stacklevel", None)
        if arguments.pop("dtype", None) is not None:
            return False
        return len(node.args) <= 2 and set(arguments) == {"input", "dim"} and arguments["dim"] == -1
    return False


class SplitBatch:
    """A fused CNN run with its first stages a few images at a time at large batches (SparseModel's
    forward, once fused). ResNet-50's early activations at batch 8 (25.7 MB for a 56x56 stage) outgrow
    the cache, so each layer of those stages waited on memory; a part of the batch whose activations
    fit stays in cache from one layer to the next. Fused ResNet-50 90%, AMD EPYC Zen 4 (32 MiB of L3),
    2 threads, batch 8 through the end of layer2 against the whole batch at once: in parts of 2 images
    1.03-1.07x, of 4 1.01-1.04x; one image at a time 1.06x when the second core ran at its usual speed
    but 0.85x in its slow spells, when the more numerous, shorter parallel regions wait on it; batch 16
    in parts of 2 1.10x.

    The part of the graph run in parts is from its input to a cut (a node after which no earlier value
    is read), through nodes that treat each image on its own (_PER_IMAGE_*): the last cut whose output
    for one image fills the L2 cache and is smaller than an activation before it (ResNet-18 and -34,
    whose activations shrink below the L2 right after the stem, run whole). The batch is split where its
    largest activation up to the cut fills half of the L3, into parts whose largest activation fills at
    most a quarter of it (a layer reads one activation and writes the next). Sizes are measured by
    running one image through the graph, once per image shape. The parts' outputs at the cut are joined
    (torch.cat) for the rest. Same layers, so the same values, up to the dense layers' rounding at
    another batch size. Only for one CPU tensor input outside ONNX exports, compilation and tracing;
    otherwise, and where the layers change after the plan was made, the graph runs whole."""

    def __init__(self, graph_module: fx.GraphModule):
        self.graph_module = graph_module
        self._cuts = _image_cuts(graph_module.graph)
        self._plans = {}  # (image shape, dtype) -> _SplitPlan or None

    def __call__(self, input):
        gm = self.graph_module
        if (not self._cuts or not isinstance(input, torch.Tensor) or input.dim() < 2 or input.shape[0] < 2
                or not input.is_cpu or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
                or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return gm(input)
        key = (tuple(input.shape[1:]), input.dtype)
        if key not in self._plans:
            self._plans[key] = self._plan(input[:1])
        plan = self._plans[key]
        if plan is None or input.shape[0] * plan.peak_bytes < cache_bytes(3) / 2 or not plan.current():
            return gm(input)
        return plan.rest(torch.cat([plan.first(part) for part in input.split(plan.images)]))

    def _plan(self, image):
        l2, l3 = cache_bytes(2), cache_bytes(3)
        if l2 is None or l3 is None:
            return None
        with torch.no_grad():  # on a copy: the graph may change its input in place (add_, relu_)
            sizes = _output_bytes(self.graph_module, image.clone(), self._cuts)
        outputs = [sizes.get(cut, 0) for cut in self._cuts]
        # A cut at the largest activation so far would join (copy) that activation again: ResNet-18's
        # after its stem (25.7 MB at batch 8) ran 0.97x the whole batch.
        cuts = [i for i, size in enumerate(outputs) if i > 0 and l2 <= size < max(outputs[:i])]
        if not cuts:
            return None
        peak = max(outputs[:cuts[-1] + 1])
        return _SplitPlan(self.graph_module, self._cuts[cuts[-1]], peak, max(1, l3 // 4 // peak))


# Module types, functions and methods that treat each image of a batch on its own. A node of any other
# kind (a reshape that may merge the batch, a BatchNorm that may be put back in training mode) ends the
# part of a graph that SplitBatch may run in parts of the batch.
_PER_IMAGE_MODULES = (nn.Conv2d, SparseConv2d, nn.MaxPool2d, nn.AvgPool2d, nn.ReLU, nn.Identity)
_PER_IMAGE_FUNCTIONS = (*_RELU_FUNCTIONS, *_ADD_FUNCTIONS, *_INPLACE_ADD_FUNCTIONS)
_PER_IMAGE_METHODS = (*_RELU_METHODS, *_ADD_METHODS, *_INPLACE_ADD_METHODS)


def _per_image(gm_modules, node):
    if node.op == "call_module":
        return isinstance(gm_modules.get(node.target), _PER_IMAGE_MODULES)
    if node.op == "call_function":
        return node.target in _PER_IMAGE_FUNCTIONS
    return node.op == "call_method" and node.target in _PER_IMAGE_METHODS


def _image_cuts(graph):
    """The nodes, in order, after which the graph reads no earlier value, from its only input through
    nodes that treat each image on its own; [] for a graph of other inputs."""
    nodes = list(graph.nodes)
    if not nodes or nodes[0].op != "placeholder" or sum(n.op == "placeholder" for n in nodes) != 1:
        return []
    modules = dict(graph.owning_module.named_modules())
    last_read = {}
    for i, node in enumerate(nodes):
        for value in node.all_input_nodes:
            last_read[value] = i
    cuts, live = [], {nodes[0]}
    for i, node in enumerate(nodes[1:], 1):
        if not _per_image(modules, node):
            break
        live = {value for value in live | {node} if last_read.get(value, -1) > i}
        if live == {node}:
            cuts.append(node)
    return cuts


def _output_bytes(gm, input, nodes):
    """{node: bytes of its output} for those of `nodes` whose output is a tensor, running gm on `input`."""
    wanted, sizes = set(nodes), {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            output = super().run_node(node)
            if node in wanted and isinstance(output, torch.Tensor):
                sizes[node] = output.numel() * output.element_size()
            return output

    Recorder(gm).run(input)
    return sizes


class _SplitPlan:
    """The graph cut in two at `cut`: `first` (input to cut), run on parts of `images` images, and
    `rest` (cut to output), graph modules holding the original's layers (the same objects)."""

    def __init__(self, gm, cut, peak_bytes, images):
        nodes = list(gm.graph.nodes)
        at = nodes.index(cut)
        first, rest = fx.Graph(), fx.Graph()
        values = {}
        for node in nodes[:at + 1]:
            values[node] = first.node_copy(node, values.__getitem__)
        first.output(values[cut])
        values = {cut: rest.placeholder(cut.name)}
        for node in nodes[at + 1:]:
            values[node] = rest.node_copy(node, values.__getitem__)
        self.first, self.rest = fx.GraphModule(gm, first), fx.GraphModule(gm, rest)
        self.peak_bytes, self.images = peak_bytes, images
        # Each (owner, name, module) link on the way from gm to a called layer, once.
        links = {}
        for node in nodes:
            if node.op == "call_module":
                owner = gm
                for name in node.target.split("."):
                    module = owner._modules[name]
                    links[(id(owner), name)] = (owner, name, module)
                    owner = module
        self._links = list(links.values())

    def current(self):
        """Whether the graph module still holds the layers the plan was made with (checked link by
        link: get_submodule on each layer took 0.3 ms per call on ResNet-50)."""
        return all(owner._modules.get(name) is module for owner, name, module in self._links)


def _call_counts(graph):
    counts = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


def _sole_user(node):
    return next(iter(node.users)) if node is not None and len(node.users) == 1 else None


def _module_of(gm, node, types):
    """The module `node` calls, when it is a call of one of `types`."""
    if node is None or node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    return module if isinstance(module, types) else None


def _sum_it_may_take(gm, node, calls):
    """(add, other) when `node` calls a SparseConv2d, called nowhere else, without a ReLU or a residual
    yet, whose output goes only to a sum `add` of it and `other` (_other_operand_of_sum); else None."""
    layer = _module_of(gm, node, SparseConv2d)
    if layer is None or calls[node.target] != 1 or layer.relu or "residual" in node.kwargs:
        return None
    add = _sole_user(node)
    other = _other_operand_of_sum(add, node)
    return None if other is None else (add, other)


def _takes_the_sum(gm, node, other, calls, residual_layers):
    """Whether the convolution `node`, which may take its sum with `other`, does: as `residual_layers`
    records where given; else unless `other` may take it too and only `other` is pointwise with stride
    1 (a bottleneck block's last layer beside a strided downsample: measured faster, module docstring)."""
    if residual_layers is not None:
        return node.target in residual_layers
    other_sum = _sum_it_may_take(gm, other, calls)
    return not (other_sum is not None and other_sum[1] is node and _pointwise_csr_conv(gm, other, calls) is not None
                and _pointwise_csr_conv(gm, node, calls) is None)


def _other_operand_of_sum(add, node):
    """`other` when `add` computes node + other (or other + node) and nothing else, with `other`
    a graph value; else None. An in-place sum qualifies only when it writes into `node`, which
    nothing else reads."""
    if add is None or len(add.args) != 2 or add.kwargs:
        return None
    if (add.op == "call_function" and add.target in _ADD_FUNCTIONS
            or add.op == "call_method" and add.target in _ADD_METHODS):
        operands = add.args
    elif (add.op == "call_function" and add.target in _INPLACE_ADD_FUNCTIONS
          or add.op == "call_method" and add.target in _INPLACE_ADD_METHODS):
        operands = add.args if add.args[0] is node else ()
    else:
        return None
    if node not in operands or operands[0] is operands[1]:
        return None
    other = operands[1] if operands[0] is node else operands[0]
    return other if isinstance(other, fx.Node) else None


def _is_relu_of(gm, relu, node):
    """Whether `relu` computes relu(node) and nothing else."""
    if relu is None:
        return False
    if relu.op == "call_module":
        return isinstance(gm.get_submodule(relu.target), nn.ReLU) and relu.args == (node,)
    if relu.op == "call_function" and relu.target in _RELU_FUNCTIONS:
        return relu.args == (node,) and set(relu.kwargs) <= {"inplace"}
    return relu.op == "call_method" and relu.target in _RELU_METHODS and relu.args == (node,) and not relu.kwargs


def _foldable(bn):
    """A BatchNorm2d whose eval-mode output is an affine map of its input: running statistics kept."""
    return not bn.training and bn.track_running_stats and bn.running_mean is not None


def _fold_batchnorm(conv, bn, fold_values):
    if isinstance(conv, SparseConv2d):
        values, bias = conv.values, conv.bias
    else:
        values, bias = conv.weight, conv.bias
    if not fold_values:
        if bias is None:
            _set_bias(conv, torch.zeros(conv.out_channels, dtype=values.dtype, device=values.device))
        return
    with torch.no_grad():
        # In float64: the fold is exact to the weights' own rounding.
        scale = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
        scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() if bn.affine else torch.zeros_like(scale)
        old_bias = bias.double() if bias is not None else torch.zeros_like(scale)
        new_bias = shift + (old_bias - bn.running_mean.double()) * scale
        if isinstance(conv, SparseConv2d):
            rows = torch.repeat_interleave(torch.arange(conv.out_channels, device=values.device),
                                           conv.crow_indices.diff().long())
            conv.values.copy_((values.double() * scale[rows]).to(values.dtype))
        else:
            conv.weight.copy_((values.double() * scale.view(-1, 1, 1, 1)).to(values.dtype))
        _set_bias(conv, new_bias.to(values.dtype))


def _set_bias(conv, bias):
    if isinstance(conv, SparseConv2d):
        conv.bias = bias  # a buffer (registered as None when the layer had no bias)
    else:
        conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)

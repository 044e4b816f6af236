"""Graph rewrites of the "sparse" flavour that onnxruntime cannot do for ops of our domain.

At export (fold_batchnorm_and_relu):

onnxruntime folds an inference BatchNormalization into the Conv before it and fuses a following
Relu, but only for its own Conv: after a CsrConv2d both would stay separate passes over the
activation. This folds them into the sparse layer itself, exactly as for a dense conv:

    BN(conv(x)) = conv'(x)   with  values'[k] = values[k] * s[row(k)],
                                   bias' = (bias - mean) * s + beta,  s = gamma / sqrt(var + eps)

and then Relu(conv'(x)) becomes conv' with relu=1. The sparsity pattern is unchanged. Folded
weights are new initializers: the exporter shares identical constants between nodes.

When a session runs the file on the native kernels (fold_residual_add_and_relu): a residual Add
after our op, and a Relu after that, become the op's optional sixth input and relu=1, which the
kernel's epilogue applies as it stores each output (two passes over the activation fewer). The
Python ops take exactly five inputs, so the file itself keeps the Add. Likewise fold_gelu makes a
Gelu after a linear op of ours the op's gelu=1, applied as each output is stored, and
group_linears_sharing_input makes one CsrLinears node, a native kernel only, of the CsrLinear
nodes that read one input (attention's query, key and value projections): the input is packed
once and all their rows split over the threads in one parallel region. fold_attention makes
attention written out in standard ops (the exporter's form of scaled_dot_product_attention) one
ScaledDotProductAttention node of ours, and fuse_feed_forward one CsrMlp node of two CsrLinear
nodes in a row, the first's output read by the second alone (native kernels only, both).
fuse_bottleneck_blocks makes one CsrBottleneck node of a ResNet bottleneck block's three CsrConv2d
nodes (1x1, 3x3, 1x1; native kernels only), run a band of rows at a time where its activations
would leave the cache, and fuse_block_shortcuts gives such a node the pointwise CsrConv2d that makes
its residual from its own input (a stage's first block's downsample) as its shortcut.
"""

import os

import numpy as np
import onnx
from onnx import numpy_helper

from .ops_table import DOMAIN, OPS

_FOLDABLE = {spec.name for spec in OPS.values() if spec.folds_batchnorm}


def fold_batchnorm_and_relu(model):
    """Rewrites `model` (an onnx.ModelProto, in place); returns the number of nodes removed."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    removed = []
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type not in _FOLDABLE:
            continue
        bn = _sole_consumer(graph, node.output[0], graph_outputs)
        if bn is not None and _foldable_batchnorm(bn, initializers) and _attribute(node, "relu") == 0:
            _fold(graph, node, bn, initializers)
            node.output[0] = bn.output[0]
            removed.append(bn)
        relu = _sole_consumer(graph, node.output[0], graph_outputs)
        if relu is not None and relu.op_type == "Relu" and not relu.domain:
            _set_attribute(node, "relu", 1)
            node.output[0] = relu.output[0]
            removed.append(relu)
    for n in removed:
        graph.node.remove(n)
    _remove_unused_initializers(graph, {t.name for t in graph.initializer})
    return len(removed)


def fold_residual_add_and_relu(model, dims):
    """Rewrites `model`'s main graph (in place) for the native kernels: op(x) + r, our op with five
    inputs and relu=0 feeding that Add alone, becomes op(x, residual=r) in the Add's place (where r
    is computed), and a Relu that alone consumes the sum becomes relu=1. Only where the op's output
    and r have the same dims, all known (`dims`: value name -> dims, as runtime.value_dims gives),
    so that the Add broadcasts nothing. Returns the number of nodes removed."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    producer = {name: n for n in nodes for name in n.output}
    removed = []
    for index, add in enumerate(nodes):
        if add.op_type != "Add" or add.domain or len(add.input) != 2 or add.input[0] == add.input[1]:
            continue
        for ours, residual in (add.input, reversed(add.input)):
            node = producer.get(ours)
            shape, residual_shape = dims.get(ours), dims.get(residual)
            if (node is not None and node.domain == DOMAIN and len(node.input) == 5 and _attribute(node, "relu") == 0
                    and _sole_consumer(graph, ours, graph_outputs) is add and shape and shape == residual_shape
                    and all(isinstance(d, int) for d in shape)):
                break
        else:
            continue
        node.input.append(residual)
        node.output[0] = add.output[0]
        relu = _sole_consumer(graph, add.output[0], graph_outputs)
        if relu is not None and relu.op_type == "Relu" and not relu.domain:
            _set_attribute(node, "relu", 1)
            node.output[0] = relu.output[0]
            removed.append(relu)
        # Moved to where the Add was, after r's producer (protobuf messages compare by value:
        # nodes are found by identity).
        nodes[next(i for i, n in enumerate(nodes) if n is node)] = None
        nodes[index] = node
        removed.append(add)
    gone = {id(n) for n in removed}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None and id(n) not in gone)
    return len(removed)


_LINEAR = ("CsrLinear", "BsrLinear")


def fold_gelu(model):
    """Rewrites `model`'s main graph (in place) for the native kernels: a Gelu in its exact form
    (approximate="none") that alone consumes the output of a CsrLinear or BsrLinear with relu=0
    becomes that op's attribute gelu=1, which the kernel applies after bias and residual as it
    stores each output (activation.h: within 3e-7 * |x| of the exact GELU). Returns the number
    of nodes removed."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    removed = []
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type not in _LINEAR or _attribute(node, "relu") != 0:
            continue
        gelu = _sole_consumer(graph, node.output[0], graph_outputs)
        if (gelu is not None and gelu.op_type == "Gelu" and not gelu.domain
                and _attribute(gelu, "approximate", b"none") == b"none"):
            _set_attribute(node, "gelu", 1)
            node.output[0] = gelu.output[0]
            removed.append(gelu)
    for n in removed:
        graph.node.remove(n)
    return len(removed)


def group_linears_sharing_input(model):
    """Rewrites `model`'s main graph (in place) for the native kernels: CsrLinear nodes with five
    inputs (no residual), no activation, weights and biases that are float32 initializers, reading the
    same X with the same in_features become one CsrLinears node (X, then each layer's crow_indices,
    col_indices, values and bias; one output per layer, same names) where the first of them was.
    Returns the number of nodes removed."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # found by index: protobuf messages compare by value
    groups = {}
    for index, node in enumerate(nodes):
        if (node.domain == DOMAIN and node.op_type == "CsrLinear" and len(node.input) == 5
                and _attribute(node, "relu") == 0 and not _attribute(node, "gelu", 0)
                and _float32_weights(node, initializers)):
            groups.setdefault((node.input[0], _attribute(node, "in_features")), []).append(index)
    removed = 0
    for (x, in_features), members in groups.items():
        if len(members) < 2:
            continue
        layers = [nodes[i] for i in members]
        nodes[members[0]] = onnx.helper.make_node(
            "CsrLinears", [x, *(name for n in layers for name in n.input[1:])], [n.output[0] for n in layers],
            name="+".join(n.name for n in layers), domain=DOMAIN, in_features=in_features)
        for i in members[1:]:
            nodes[i] = None
        removed += len(members) - 1
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None)
    return removed


def fuse_feed_forward(model):
    """Rewrites `model`'s main graph (in place) for the native kernels: a CsrLinear with five inputs
    (no residual; ReLU, GELU or no activation) whose output only a second CsrLinear reads, as its
    X, the second with no activation (a residual allowed) and in_features the first's rows, both
    with float32 initializer weights, become one CsrMlp node (X, the first layer's crow_indices,
    col_indices, values and bias, the second's, then the residual if any; attributes in_features
    and the first layer's relu / gelu) where the second was. Its kernel takes X 64 rows at a time
    through both layers, the hidden activations in cache rather than written out and packed again.
    Returns the number of nodes removed."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # found by index: protobuf messages compare by value
    producer = {name: n for n in nodes for name in n.output}
    removed = set()
    for index, second in enumerate(nodes):
        if (second.domain != DOMAIN or second.op_type != "CsrLinear" or len(second.input) not in (5, 6)
                or _attribute(second, "relu") != 0 or _attribute(second, "gelu", 0)
                or not _float32_weights(second, initializers)):
            continue
        first = producer.get(second.input[0])
        if (first is None or id(first) in removed or first.domain != DOMAIN or first.op_type != "CsrLinear"
                or len(first.input) != 5 or not _float32_weights(first, initializers)
                or _sole_consumer(graph, first.output[0], graph_outputs) is not second
                or _attribute(second, "in_features") != initializers[first.input[1]].dims[0] - 1):
            continue
        nodes[index] = onnx.helper.make_node(
            "CsrMlp", [first.input[0], *first.input[1:5], *second.input[1:]], list(second.output),
            name=f"{first.name}+{second.name}", domain=DOMAIN, in_features=_attribute(first, "in_features"),
            relu=_attribute(first, "relu"), gelu=_attribute(first, "gelu", 0))
        removed.add(id(first))
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in removed)
    return len(removed)


def fuse_bottleneck_blocks(model, dims, *, banded_only=True):
    """Rewrites `model`'s main graph (in place) for the native kernels: three CsrConv2d nodes in a row,
    a 1x1, a 3x3 with stride 1 and padding 1 and a 1x1 (each of one group, undilated, with float32
    initializer weights), each of the first two read by the next alone and with five inputs (the last
    may have a residual), become one CsrBottleneck node (X, each layer's crow_indices, col_indices,
    values and bias, then the residual if any; attributes in_channels and relu1 / relu2 / relu3) where
    the last was: a ResNet bottleneck block, whose kernel runs it a band of rows at a time where its
    activations would leave the cache. With `banded_only`, only where X's dims are known (`dims` as
    runtime.value_dims gives) and the kernel would run bands (sparse_rt._C.bottleneck_band_rows, on
    the session's threads counted as the kernels count them): elsewhere the node's layers would run
    one after the other, its inner activations in buffers of its own rather than in those
    onnxruntime's planner reuses (ResNet-50 95% at batch 1: 0.97x the three nodes). Run after
    fold_residual_add_and_relu, which gives the last layer its residual. Returns the number of nodes
    removed."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # found by index: protobuf messages compare by value
    producer = {name: n for n in nodes for name in n.output}

    def conv_feeding(name, consumer, kernel):
        """The CsrConv2d with five inputs making `name` for `consumer` alone, of `kernel` x `kernel`
        taps (same-size output), or None."""
        node = producer.get(name)
        ok = (node is not None and id(node) not in removed and len(node.input) == 5
              and _sole_consumer(graph, name, graph_outputs) is consumer and _block_conv(node, kernel, initializers))
        return node if ok else None

    removed = set()
    for index, last in enumerate(nodes):
        if len(last.input) not in (5, 6) or not _block_conv(last, 1, initializers):
            continue
        second = conv_feeding(last.input[0], last, 3)
        first = conv_feeding(second.input[0], second, 1) if second is not None else None
        if first is None or banded_only and not _runs_in_bands(dims.get(first.input[0]), (first, second, last),
                                                                initializers):
            continue
        nodes[index] = onnx.helper.make_node(
            "CsrBottleneck", [first.input[0], *first.input[1:5], *second.input[1:5], *last.input[1:]],
            list(last.output), name=f"{first.name}+{second.name}+{last.name}", domain=DOMAIN,
            in_channels=_attribute(first, "in_channels"), relu1=_attribute(first, "relu"),
            relu2=_attribute(second, "relu"), relu3=_attribute(last, "relu"))
        removed.update((id(first), id(second)))
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in removed)
    return len(removed)


def fuse_block_shortcuts(model):
    """Rewrites `model`'s main graph (in place) for the native kernels: a CsrBottleneck node and a pointwise
    CsrConv2d of the same input (1x1, stride 1, one group, undilated, float32 initializer weights), one
    adding the other's output, which nothing else reads, become one CsrBottleneck with that layer as its
    shortcut (its residual input left empty), in the place of the one that added: a ResNet stage's first
    block with a pointwise downsample (ResNet-50's first), whose sum the kernel then takes in each band
    rather than through memory. Either may have taken the sum: the block (its last layer took it; the
    downsample without a ReLU) or the downsample (the block's last layer without a ReLU). Run after
    fuse_bottleneck_blocks. Returns the number of nodes removed."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # found by index: protobuf messages compare by value
    producer = {name: n for n in nodes for name in n.output}
    residual = 1 + 3 * 4  # CsrBottleneck's residual input, after X and its layers' four each

    def is_block(node, inputs):
        return (node is not None and node.domain == DOMAIN and node.op_type == "CsrBottleneck"
                and len(node.input) == inputs)

    removed = set()
    for index, node in enumerate(nodes):
        if is_block(node, residual + 1):
            block, shortcut, summand = node, producer.get(node.input[residual]), node.input[residual]
            fits = shortcut is not None and len(shortcut.input) == 5 and _attribute(shortcut, "relu") == 0
            relu = _attribute(block, "relu3")
        elif node.domain == DOMAIN and node.op_type == "CsrConv2d" and len(node.input) == 6:
            block, shortcut, summand = producer.get(node.input[5]), node, node.input[5]
            fits = is_block(block, residual) and _attribute(block, "relu3") == 0
            relu = _attribute(shortcut, "relu")
        else:
            continue
        if (not fits or id(block) in removed or shortcut.input[0] != block.input[0]
                or not _block_conv(shortcut, 1, initializers)
                or _sole_consumer(graph, summand, graph_outputs) is not node):
            continue
        nodes[index] = onnx.helper.make_node(
            "CsrBottleneck", [*block.input[:residual], "", *shortcut.input[1:5]], list(node.output),
            name=f"{block.name}+{shortcut.name}", domain=DOMAIN, in_channels=_attribute(block, "in_channels"),
            relu1=_attribute(block, "relu1"), relu2=_attribute(block, "relu2"), relu3=relu)
        removed.add(id(shortcut) if node is block else id(block))
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in removed)
    return len(removed)


def _runs_in_bands(input_dims, layers, initializers):
    """Whether the bottleneck kernel runs a block of `layers` (CsrConv2d nodes) on an input of
    `input_dims` in bands."""
    from .._C import bottleneck_band_rows

    if not input_dims or len(input_dims) != 4 or not all(isinstance(d, int) for d in input_dims):
        return False
    mid1, mid2, out_channels = (initializers[n.input[1]].dims[0] - 1 for n in layers)
    return bottleneck_band_rows(*input_dims, mid1, mid2, out_channels, nnz2=initializers[layers[1].input[2]].dims[0],
                                threads=os.cpu_count() or 1) > 0


def _block_conv(node, kernel, initializers):
    """Whether `node` is a CsrConv2d of `kernel` x `kernel` taps, stride 1, padding kernel // 2, one
    group and no dilation, with float32 initializer weights."""
    if node.domain != DOMAIN or node.op_type != "CsrConv2d" or not _float32_weights(node, initializers):
        return False
    geometry = {"kernel_h": kernel, "kernel_w": kernel, "stride_h": 1, "stride_w": 1, "pad_h": kernel // 2,
                "pad_w": kernel // 2, "dilation_h": 1, "dilation_w": 1, "group": 1}
    return all(_attribute(node, name) == value for name, value in geometry.items())


_HEADS_FIRST, _KEYS_TRANSPOSED = [0, 2, 1, 3], [0, 2, 3, 1]


def fold_attention(model, dims):
    """Rewrites `model`'s main graph (in place): attention written out in standard ops, as the
    exporter writes torch's scaled_dot_product_attention without a mask,

        Qh = Transpose(Reshape(q, [B, S, H, D]), 0,2,1,3)   (V likewise; K to 0,2,3,1)
        out = Reshape(Transpose(MatMul(Softmax(MatMul(Qh, Kt) * c), Vh), 0,2,1,3), [B, S, H*D])

    becomes one ScaledDotProductAttention of ours (num_heads=H, scale=c, or 1/c for a Div; a native
    kernel only) on q, k and v as they are: no transposed copies of them or of the output, and the
    heads split over the threads in one parallel region. Only where q, k, v and out have the same dims
    [B, S, H*D], all known (`dims` as runtime.value_dims gives), and every intermediate value feeds
    the next node alone. Returns the number of nodes removed."""
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)  # found by index: protobuf messages compare by value
    producer = {name: n for n in nodes for name in n.output}

    def sole_consumer(name):
        return _sole_consumer(graph, name, graph_outputs)

    def made_by(name, op_type, consumer):
        """The standard node of `op_type` making `name` for `consumer` alone, or None."""
        node = producer.get(name)
        ok = node is not None and node.op_type == op_type and not node.domain and sole_consumer(name) is consumer
        return node if ok else None

    def constant(name):
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    def heads_of(transpose, perm):
        """(`transpose`, the Reshape splitting heads before it, that Reshape's input, [H, D]), or None."""
        if transpose is None or _attribute(transpose, "perm") != perm:
            return None
        reshape = made_by(transpose.input[0], "Reshape", transpose)
        shape = constant(reshape.input[1]) if reshape is not None else None
        source = dims.get(reshape.input[0]) if reshape is not None else None
        if (shape is None or shape.shape != (4,) or not source or len(source) != 3
                or not all(isinstance(d, int) and d > 0 for d in source)
                or list(shape) != [*source[:2], shape[2], shape[3]] or shape[2] * shape[3] != source[2]):
            return None
        return transpose, reshape, reshape.input[0], [int(shape[2]), int(shape[3])]

    removed, constants = set(), set()
    for softmax in nodes:
        if softmax.op_type != "Softmax" or softmax.domain or _attribute(softmax, "axis", -1) not in (-1, 3):
            continue
        scaling = producer.get(softmax.input[0])
        if scaling is None or scaling.op_type not in ("Mul", "Div"):
            continue
        scaling = made_by(softmax.input[0], scaling.op_type, softmax)
        if scaling is None:
            continue
        # scores * c, c * scores or scores / c, with c a float32 scalar initializer
        orders = [list(scaling.input)] + ([list(reversed(scaling.input))] if scaling.op_type == "Mul" else [])
        scores_name, factor_name = next(((s, c) for s, c in orders if constant(c) is not None), (None, None))
        factor = constant(factor_name) if factor_name else None
        if factor is None or factor.size != 1 or factor.dtype != np.float32 or float(factor.ravel()[0]) == 0:
            continue
        scores = made_by(scores_name, "MatMul", scaling)
        weighted = sole_consumer(softmax.output[0])
        if scores is None or weighted is None or weighted.op_type != "MatMul" or weighted.input[0] != softmax.output[0]:
            continue
        merge = sole_consumer(weighted.output[0])
        out = (sole_consumer(merge.output[0]) if merge is not None and merge.op_type == "Transpose" and not merge.domain
               else None)
        q, k, v = (heads_of(made_by(name, "Transpose", consumer), perm) for name, consumer, perm in (
            (scores.input[0], scores, _HEADS_FIRST), (scores.input[1], scores, _KEYS_TRANSPOSED),
            (weighted.input[1], weighted, _HEADS_FIRST)))
        if (q is None or k is None or v is None or not q[3] == k[3] == v[3]
                or _attribute(merge, "perm") != _HEADS_FIRST or out is None or out.op_type != "Reshape"
                or out.domain or not dims.get(q[2]) == dims.get(k[2]) == dims.get(v[2]) == dims.get(out.output[0])):
            continue
        scale = float(factor.ravel()[0])
        heads, _ = q[3]
        attention = onnx.helper.make_node(
            "ScaledDotProductAttention", [q[2], k[2], v[2]], [out.output[0]], name=f"{softmax.name}.attention",
            domain=DOMAIN, num_heads=heads, scale=scale if scaling.op_type == "Mul" else 1.0 / scale)
        folded = [scaling, scores, softmax, weighted, merge, *(n for split in (q, k, v) for n in split[:2])]
        removed.update(id(n) for n in folded)
        constants.update([factor_name, out.input[1], *(split[1].input[1] for split in (q, k, v))])
        nodes[next(i for i, n in enumerate(nodes) if n is out)] = attention
    if removed and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    del graph.node[:]
    graph.node.extend(n for n in nodes if id(n) not in removed)
    _remove_unused_initializers(graph, constants)  # the shapes and the scale, unless read elsewhere
    return len(removed)


def _float32_weights(node, initializers):
    types = [initializers[name].data_type if name in initializers else None for name in node.input[1:5]]
    int32, float32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
    return types == [int32, int32, float32, float32]


def _sole_consumer(graph, name, graph_outputs):
    if name in graph_outputs:
        return None
    consumers = [n for n in graph.node if name in n.input]
    return consumers[0] if len(consumers) == 1 else None


def _foldable_batchnorm(node, initializers):
    return (node.op_type == "BatchNormalization" and not node.domain and len(node.output) == 1
            and _attribute(node, "training_mode", 0) == 0
            and all(name in initializers for name in node.input[1:5]))


def _fold(graph, node, bn, initializers):
    gamma, beta, mean, var = (numpy_helper.to_array(initializers[name]).astype(np.float64)
                              for name in bn.input[1:5])
    scale = gamma / np.sqrt(var + _attribute(bn, "epsilon", 1e-5))
    crow = numpy_helper.to_array(initializers[node.input[1]])
    values_proto, bias_proto = initializers[node.input[3]], initializers[node.input[4]]
    values = numpy_helper.to_array(values_proto)
    bias = numpy_helper.to_array(bias_proto).astype(np.float64)
    row_of_value = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    folded = {
        3: (values * scale[row_of_value]).astype(values.dtype),
        4: ((bias - mean) * scale + beta).astype(values.dtype),
    }
    for index, array in folded.items():
        name = _unique_name(f"{node.input[index]}.bn_folded", initializers)
        tensor = numpy_helper.from_array(array, name)
        graph.initializer.append(tensor)
        initializers[name] = tensor
        node.input[index] = name


def _remove_unused_initializers(graph, names):
    """Removes the initializers of `graph` named in `names` that no node (of any subgraph too)
    reads and that are not graph outputs."""
    used = _names_read(graph) | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name in names and t.name not in used]:
        graph.initializer.remove(t)


def _names_read(graph):
    names = set()
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            for subgraph in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= _names_read(subgraph)
    return names


def _unique_name(base, taken):
    name, i = base, 1
    while name in taken:
        name, i = f"{base}.{i}", i + 1
    return name


def _attribute(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _set_attribute(node, name, value):
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))

"""benchmarks/layers_vs_deepsparse.py: DeepSparse's per-layer rows read and matched to module names, and
graphs that pass their layers to functions timed node by node (sparse_rt.timing.node_times); its run
itself needs build/deepsparse-venv and is the benchmark's, not a test's."""

import importlib
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from sparse_rt.timing import node_times

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Rows of `deepsparse.debug_analysis` on ResNet-50 (AMD EPYC, 2026-12-06), a fused group among them, columns
# unpadded.
ROWS = "\n".join([
    "Name | OutDims | KerDims | Strides | ActSpars | Time(ms) |  Util(%) | TFLOPS   | Canonical Name",
    "pyramid_0 | [8, 64, 1, 56, 56] | [] | [1, 1, 1] | 0.1814 | 10.6744 | 59.5697 | 0.1980 | "
    "/conv1/Conv_output_0,/maxpool/MaxPool_output_0,/layer1/layer1.0/conv1/Conv_output_0",
    "ks_convolution-90.1%_5 | [8, 512, 1, 28, 28] | [512, 256, 1, 1, 1] | [1, 2, 2] | 0.5003 | 4.5714 | 108.4534 "
    "| 0.3604 | /layer2/layer2.0/downsample/downsample.0/Conv_output_0",
    "ks_gevm_be-90.0%_45 | [1, 8, 1, 1, 1000] | [2048, 1008, 1, 1, 1] | [1, 1, 1] | 0.0000 | 0.3040 | 32.7340 "
    "| 0.1089 | output",
    "Naive Subgraph 1 | [-1, -1, -1, -1, -1] | [] | [-1, -1, -1] | 0.0000 | 0.0240 | 0.0000 | 0.0000 | <none>",
    "Total Time(MS): 102.667600",
])


@pytest.fixture
def layers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("layers_vs_deepsparse")


def test_onnx_value_names_give_the_modules_they_come_from(layers):
    assert layers.module_name("/layer2/layer2.0/downsample/downsample.0/Conv_output_0") == "layer2.0.downsample.0"
    assert layers.module_name("/layer1/layer1.0/conv1/Conv_output_0") == "layer1.0.conv1"
    assert layers.module_name("/conv1/Conv_output_0") == "conv1"


def test_debug_analysis_rows_are_read_with_their_layers_and_the_total(layers):
    rows, total = layers.read_debug_analysis(ROWS)
    assert total == pytest.approx(102.6676)
    assert rows == [("pyramid_0", 10.6744, ["conv1", "maxpool", "layer1.0.conv1"]),
                    ("ks_convolution-90.1%_5", 4.5714, ["layer2.0.downsample.0"]),
                    ("ks_gevm_be-90.0%_45", 0.304, [])]
    with pytest.raises(layers.DeepSparseUnavailable, match="no total"):
        layers.read_debug_analysis(ROWS.replace("Total Time", "Sum"))


def test_rows_and_timed_entries_that_share_a_module_form_one_group(layers):
    ours = {"sparse_linears": (3e-3, ["l0.query", "l0.key", "l0.value"]), "attention": (2e-3, []),
            "l0.dense": (1e-3, ["l0.dense"]), "add_layer_norm": (5e-4, ["l0.norm"]), "l0.extra": (1e-4, ["l0.extra"])}
    theirs = [("pyramid_1", 0.7, ["l0.value"]), ("pyramid_3", 0.7, ["l0.query"]), ("pyramid_5", 0.7, ["l0.key"]),
              ("pyramid_7", 1.0, ["l0"]), ("pyramid_9", 1.0, ["l0.dense", "l0.norm"])]
    groups, rest_ours, rest_theirs = layers.match(ours, theirs)
    assert groups == [(["sparse_linears"], [0, 1, 2]), (["l0.dense", "add_layer_norm"], [4])]
    assert rest_ours == ["attention", "l0.extra"]
    assert rest_theirs == [3]


def _sleep_then_add(linears, x):
    time.sleep(0.02)
    return linears[0](x) + linears[1](x)


def _functions_given_modules():
    root = nn.Module()
    root.a, root.b = nn.Linear(4, 4), nn.Linear(4, 4)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    summed = graph.call_function(_sleep_then_add, ((graph.get_attr("a"), graph.get_attr("b")), x))
    graph.output(graph.call_module("b", (summed,)))
    return torch.fx.GraphModule(root, graph)


def test_a_graph_passing_modules_to_functions_is_timed_node_by_node(layers):
    module = _functions_given_modules()
    assert layers.layers_in_functions(module)
    assert not layers.layers_in_functions(torch.fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))
    times, wall, names = node_times(module, (torch.randn(2, 4),), max_seconds=0, max_runs=1)
    function, call = (node.name for node in module.graph.nodes if node.op in ("call_function", "call_module"))
    assert names == {function: ["a", "b"], call: ["b"]}
    assert set(times) == {function, call}
    assert times[function] >= 0.02 > times[call] and wall >= times[function]

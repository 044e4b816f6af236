"""benchmarks/layers_vs_deepsparse.py: DeepSparse's per-layer rows read and matched to module names
(its run itself needs build/deepsparse-venv and is the benchmark's, not a test's)."""

import importlib
from pathlib import Path

import pytest

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

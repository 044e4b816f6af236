"""The DLMC ResNet-50 layers of benchmarks/test_cpu_conv.py as sparsify(format="auto") runs them: the
sparse kernel where the planner's cost model expects it to win, else the dense convolution. Its
ratio against dense shows whether the planner ever makes a layer slower than dense.

    python -m pytest benchmarks/test_cpu_plan.py --benchmark-warmup=on
"""

import pytest
import test_cpu_conv as conv  # a module import: pytest would collect an imported test function

SERIES = [("planned", "0.8"), ("planned", "0.9")]


@pytest.mark.parametrize("engine", ["sparse_rt", "dense"])
@pytest.mark.parametrize("series", SERIES, ids=lambda s: f"{s[0]}-{s[1]}")
@pytest.mark.parametrize("layer", range(conv.LAYERS))
def test_rn50_conv_planned(benchmark, dlmc, layer, series, engine):
    conv.test_rn50_conv(benchmark, dlmc, layer, series, engine)

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

import sparse_rt
from sparse_rt.bench.dlmc import dlmc_root


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available() and sparse_rt.ops.build_info().get("cuda"):
        devices.append("cuda")
    return devices


# One device list for the whole suite; CUDA cases appear wherever a CUDA build can run them.
DEVICES = _devices()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def dlmc():
    root = dlmc_root(Path(__file__).parents[1])
    if not root.is_dir():
        pytest.skip(f"DLMC patterns not found at {root} (set SPARSE_RT_DLMC)")
    return root


requires_compiled_ops = pytest.mark.skipif(
    not sparse_rt.ops.HAS_COMPILED_OPS,
    reason=f"sparse_rt._C is not built ({sparse_rt.ops._library.LOAD_ERROR})",
)


# Property tests (test_properties.py): a few examples each in the normal run;
# HYPOTHESIS_PROFILE=long for a longer search.
settings.register_profile("quick", max_examples=15, deadline=None)
settings.register_profile("long", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

"""pytest configuration, hooks and fixtures only; shared helpers live in helpers.py.

Tests over ~5 s carry the `slow` marker: `make test` runs everything, `pytest tests -m "not slow"`
gives a quick run. Property tests (test_properties.py) take a few examples each by default;
HYPOTHESIS_PROFILE=long searches longer."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from sparse_rt.bench.dlmc import dlmc_root
from sparse_rt.ops import CSR_CUDA_KERNEL_VARIABLE

settings.register_profile("quick", max_examples=15, deadline=None)
settings.register_profile("long", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


def pytest_configure(config):
    # fp32 dense references must be fp32: cuDNN's default TF32 convolutions (Ampere and newer) put
    # the reference itself ~1e-4 off, failing the 1e-5 comparisons on a GPU.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    config.addinivalue_line("markers", "slow: takes over ~5 s; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "cuda: runs the CUDA kernels (skipped without them); select with -m cuda")


@pytest.fixture
def csr_device(device, monkeypatch):
    """The device of a CSR_DEVICES parameter `device`, with SPARSE_RT_CSR_CUDA_KERNEL set for its
    kernel choice (unset: the cost model picks). monkeypatch, not sparse_rt.ops.csr_cuda_kernel:
    the setting must outlive the fixture's return."""
    device, _, kernel = device.partition("-")
    if kernel:
        monkeypatch.setenv(CSR_CUDA_KERNEL_VARIABLE, kernel)
    else:
        monkeypatch.delenv(CSR_CUDA_KERNEL_VARIABLE, raising=False)
    return device


@pytest.fixture
def dlmc():
    root = dlmc_root(Path(__file__).parents[1])
    if not root.is_dir():
        pytest.skip(f"DLMC patterns not found at {root} (set SPARSE_RT_DLMC)")
    return root

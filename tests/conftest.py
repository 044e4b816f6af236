"""pytest configuration, hooks and fixtures only; shared helpers live in helpers.py.

Tests over ~5 s carry the `slow` marker: `make test` runs everything, `pytest tests -m "not slow"`
gives a quick run. Property tests (test_properties.py) take a few examples each by default;
HYPOTHESIS_PROFILE=long searches longer."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

from sparse_rt.bench.dlmc import dlmc_root

settings.register_profile("quick", max_examples=15, deadline=None)
settings.register_profile("long", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes over ~5 s; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "cuda: runs the CUDA kernels (skipped without them); select with -m cuda")


@pytest.fixture
def dlmc():
    root = dlmc_root(Path(__file__).parents[1])
    if not root.is_dir():
        pytest.skip(f"DLMC patterns not found at {root} (set SPARSE_RT_DLMC)")
    return root

"""The CPU ops' block cache (csrc/torch/cpu/block_cache.h): outputs and scratch of 1 MiB or more
come from freed blocks kept for reuse. Reuse must never hand out a block a live tensor holds,
the limit bounds what is kept, and tensors outlive the cache being emptied."""

import threading

import pytest
import torch
from helpers import randn, random_csr, requires_compiled_ops

from sparse_rt import ops
from sparse_rt.ops import _library

pytestmark = requires_compiled_ops

IN, OUT, ROWS = 256, 1024, 512  # a [512, 1024] fp32 output: 2 MiB, cached
WEIGHT = random_csr(OUT, IN, 0.1, seed=3)


@pytest.fixture(autouse=True)
def restore_limit():
    previous = ops.set_cpu_cache_limit(1 << 30)
    yield
    ops.set_cpu_cache_limit(previous)


def linear(x):
    return ops.csr_linear(x, WEIGHT.crow_indices, WEIGHT.col_indices, WEIGHT.values, None, IN)


def reference(x):
    return x.double() @ WEIGHT.to_dense().double().T


def test_a_freed_output_is_reused_and_live_outputs_never_share_memory():
    x = randn(ROWS, IN, seed=1)
    first = linear(x)
    pointer = first.data_ptr()
    del first
    hits = ops.cpu_cache_stats()["hits"]
    again = linear(x)
    assert again.data_ptr() == pointer
    assert ops.cpu_cache_stats()["hits"] > hits
    other = linear(randn(ROWS, IN, seed=2))  # `again` is alive: a fresh block
    span = ROWS * OUT * 4
    assert abs(other.data_ptr() - again.data_ptr()) >= span
    torch.testing.assert_close(again.double(), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other.double(), reference(randn(ROWS, IN, seed=2)), rtol=1e-5, atol=1e-5)


def test_small_outputs_bypass_the_cache():
    before = ops.cpu_cache_stats()
    y = linear(randn(8, IN, seed=1))  # 32 KiB
    after = ops.cpu_cache_stats()
    assert (after["hits"], after["misses"], after["in_use_bytes"]) == (
        before["hits"], before["misses"], before["in_use_bytes"])
    torch.testing.assert_close(y.double(), reference(randn(8, IN, seed=1)), rtol=1e-5, atol=1e-5)


def test_limit_zero_keeps_nothing_and_emptying_spares_live_tensors():
    x = randn(ROWS, IN, seed=1)
    kept = linear(x)
    ops.empty_cpu_cache()
    assert ops.cpu_cache_stats()["idle_bytes"] == 0
    assert ops.cpu_cache_stats()["in_use_bytes"] >= ROWS * OUT * 4
    torch.testing.assert_close(kept.double(), reference(x), rtol=1e-5, atol=1e-5)
    kept.resize_(2 * ROWS, OUT)  # a cached storage grows through the cache's allocator
    kept[ROWS:] = 1.0
    assert kept[ROWS:].eq(1.0).all()
    ops.set_cpu_cache_limit(0)
    del kept
    assert ops.cpu_cache_stats()["idle_bytes"] == 0


def test_a_full_cache_is_emptied_before_it_grows_past_its_limit():
    ops.empty_cpu_cache()
    ops.set_cpu_cache_limit(3 << 20)  # room for one 2 MiB output, not two
    a, b = linear(randn(ROWS, IN, seed=1)), linear(randn(ROWS, IN, seed=2))
    del a
    assert ops.cpu_cache_stats()["idle_bytes"] == 2 << 20
    del b
    assert ops.cpu_cache_stats()["idle_bytes"] == 2 << 20


def test_limit_arguments_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="limit_bytes must be >= 0"):
        ops.set_cpu_cache_limit(-1)
    monkeypatch.setenv("SPARSE_RT_CPU_CACHE_LIMIT_MB", "lots")
    with pytest.raises(ValueError, match="SPARSE_RT_CPU_CACHE_LIMIT_MB must be a whole number of MiB"):
        _library._cache_limit_from_environment()
    monkeypatch.setenv("SPARSE_RT_CPU_CACHE_LIMIT_MB", "5")
    _library._cache_limit_from_environment()
    assert ops.cpu_cache_stats()["limit_bytes"] == 5 << 20


def test_conv_outputs_and_scratch_from_many_threads_match_one_thread():
    weight = random_csr(64, 64 * 9, 0.1, seed=5)
    inputs = [randn(2, 64, 40, 40, seed=s) for s in range(4)]  # padded 3x3: packed image and wide scratch

    def conv(x):
        return ops.csr_conv2d(x, weight.crow_indices, weight.col_indices, weight.values, None, 64,
                              [3, 3], [1, 1], [1, 1], [1, 1], 1)

    expected = [conv(x) for x in inputs]
    expected_dense = [torch.nn.functional.conv2d(x.double(), weight.to_dense().double().reshape(64, 64, 3, 3),
                                                 padding=1) for x in inputs]
    for got, want in zip(expected, expected_dense):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    mismatches, errors = [], []

    def worker(t):
        try:
            for i in range(40):
                k = (t + i) % len(inputs)
                if not torch.equal(conv(inputs[k]), expected[k]):
                    mismatches.append((t, i))
        except Exception as e:  # noqa: BLE001  (reported below with the thread)
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and not mismatches, (errors, mismatches[:5])

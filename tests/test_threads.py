"""Thread safety: one SparseModel shared by 8 Python threads gives the single-threaded outputs,
and the ops release the GIL while their kernels run (README: "Threads and the GIL")."""

import threading
import time

import pytest
import torch
from helpers import random_csr, requires_compiled_ops
from torch import nn

import sparse_rt

pytestmark = requires_compiled_ops

THREADS, CALLS, INPUTS = 8, 1000, 16


def _cnn_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 10))
    return sparse_rt.sparsify(sparse_rt.magnitude_prune(net, 0.7), min_sparsity=0.0, format="csr").eval()


def test_one_model_called_from_8_threads_matches_single_threaded():
    model = _cnn_mlp()
    assert sum(isinstance(m, (sparse_rt.nn.SparseLinear, sparse_rt.nn.SparseConv2d)) for m in model.modules()) == 4
    inputs = torch.randn(INPUTS, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = [model(x) for x in inputs]
    mismatches, errors = [], []
    start = threading.Barrier(THREADS)

    def worker(t):
        try:
            start.wait()
            with torch.inference_mode():
                for i in range(CALLS):
                    k = (t * 7 + i) % INPUTS  # threads interleave different inputs
                    if not torch.equal(model(inputs[k]), expected[k]):
                        mismatches.append((t, i))
        except Exception as e:  # noqa: BLE001  (reported below with the thread)
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert not mismatches, f"{len(mismatches)} of {THREADS * CALLS} calls differed, first {mismatches[:3]}"


def test_ops_release_the_gil():
    w = random_csr(4096, 2048, 0.5, seed=0)
    x = torch.randn(512, 2048)
    op = lambda: torch.ops.sparse_rt.csr_linear(x, w.crow_indices, w.col_indices, w.values, None, 2048)
    t0 = time.perf_counter()
    op()
    single = time.perf_counter() - t0
    if single < 0.02:
        pytest.skip(f"the op took {single * 1e3:.1f} ms, too short to observe the GIL")
    done = threading.Event()
    ticks = 0

    def run():
        op()
        done.set()

    th = threading.Thread(target=run)
    th.start()
    # With the GIL held for the whole op, this loop could not run until the op returned.
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    th.join()
    assert ticks >= 5, f"the main thread ran {ticks} times during a {single * 1e3:.0f} ms op"

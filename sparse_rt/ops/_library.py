"""Loads the compiled ops (sparse_rt._C). Without them the ops run on the pure-torch references,
after one warning that says why."""

import contextlib
import os
import warnings

try:
    from .. import _C  # noqa: F401  (loading registers torch.ops.sparse_rt.*)

    HAS_COMPILED_OPS = True
    LOAD_ERROR = None
except ImportError as e:  # not built, or built against another torch
    HAS_COMPILED_OPS = False
    LOAD_ERROR = e
    warnings.warn(
        f"sparse_rt: compiled ops are unavailable ({e}); sparse layers fall back to slow pure-torch "
        "reference implementations. Build them with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )


def build_info():
    """How the compiled ops were built ({} when they are missing)."""
    return dict(_C.build_info()) if HAS_COMPILED_OPS else {}


def core_round_trip_ns(cpu_a, cpu_b, rounds):
    """The mean round trip in ns of a cache line between threads pinned to CPUs cpu_a and cpu_b over
    `rounds` exchanges; None where they cannot be pinned or the compiled ops are missing."""
    if not HAS_COMPILED_OPS:
        return None
    ns = _C.core_round_trip_ns(int(cpu_a), int(cpu_b), int(rounds))
    return ns if ns >= 0 else None


def onnxruntime_kernels_library():
    """Path of the library onnxruntime loads for the native kernels of the "sparse" ONNX flavour
    (sparse_rt._C itself, which exports RegisterCustomOps), or None where they were not built in."""
    return _C.__file__ if build_info().get("onnxruntime_kernels") else None


def set_full_index_checks(enabled):
    """Makes direct op calls validate every column index (O(nnz)) before the kernel runs, and on
    CUDA the row pointers too (on the device, then a synchronization to read the verdict).

    Off by default: sparse_rt's modules validate their weights when built or loaded, the CPU ops
    always check the row pointers, and the CUDA kernels check each row they read (a malformed one
    comes out NaN). Also enabled by SPARSE_RT_CHECK_INDICES=1. Returns the previous setting.
    Without the compiled ops it does nothing (the references index safely).
    """
    if not HAS_COMPILED_OPS:
        return False
    previous = _C.full_index_checks_enabled()
    _C.set_full_index_checks(bool(enabled))
    return previous


@contextlib.contextmanager
def full_index_checks(enabled=True):
    """Turns full index checks on (or off) for op calls made by the current thread inside the
    block; other threads keep their own setting, so concurrent blocks cannot undo each other."""
    with _thread_setting("set_thread_full_index_checks", enabled):
        yield


def set_trusted_packings(enabled):
    """Makes the CPU ops trust the `packed` arguments (pack_csr's packings) of csr_linear, csr_linears,
    csr_mlp and csr_conv2d: they check a packing's header and its row blocks' offsets (O(rows / 256)) but no
    longer compare its entries with col_indices and values (a pass over every nonzero of both, on
    every call; half the time of a BERT-base feed-forward block at 128 tokens), and the SpMM keeps
    each segment of nonzeros within its row block and checks the packing's columns (clamping them
    into the weight in a row block where one lies outside it), so no read goes out of bounds.
    sparse_rt's layers of density PACKING_MIN_DENSITY and more then pack from
    PACKING_MIN_ROWS_TRUSTED input rows on (sparse_rt/nn/packing.py).

    The price: a layer repacks after the in-place changes PyTorch counts, but after writes it does not
    count (through .data or NumPy, or to tensors made in inference mode) the ops compute with the
    packing made before them, silently, until the layer's repack() is called. Turn it on for weights
    that stay as loaded. Off by default; also enabled by SPARSE_RT_TRUST_PACKINGS=1. Returns the
    previous setting. Without the compiled ops it does nothing (they have no packings)."""
    if not HAS_COMPILED_OPS:
        return False
    previous = _C.trusted_packings_enabled()
    _C.set_trusted_packings(bool(enabled))
    return previous


def trusted_packings_enabled():
    """Whether op calls made by the current thread trust packings (set_trusted_packings)."""
    return HAS_COMPILED_OPS and _C.trusted_packings_enabled()


@contextlib.contextmanager
def trusted_packings(enabled=True):
    """Trusts packings (set_trusted_packings) for op calls made by the current thread inside the
    block, or not (enabled=False); other threads keep their own setting."""
    with _thread_setting("set_thread_trusted_packings", enabled):
        yield


@contextlib.contextmanager
def _thread_setting(setter, enabled):
    """The current thread's state of a compiled setting (_C.<setter>) on or off inside the block."""
    if not HAS_COMPILED_OPS:
        yield
        return
    previous = getattr(_C, setter)(int(bool(enabled)))
    try:
        yield
    finally:
        getattr(_C, setter)(previous)


def cpu_cache_stats():
    """The CPU ops' block cache (csrc/torch/cpu/block_cache.h): their outputs and scratch of 1 MiB
    or more come from freed blocks kept for reuse, so that a model's forward does not page-fault
    its activations in again on every call. A dict of in_use_bytes, idle_bytes (kept for reuse),
    limit_bytes, hits and misses; {} without the compiled ops."""
    return dict(_C.cpu_block_cache_stats()) if HAS_COMPILED_OPS else {}


def set_cpu_cache_limit(limit_bytes):
    """The most idle memory the CPU block cache keeps (1 GiB by default; 0 keeps none). When a
    freed block would take it past the limit, every idle block is released first. Also
    SPARSE_RT_CPU_CACHE_LIMIT_MB. Returns the previous limit."""
    if not HAS_COMPILED_OPS:
        return 0
    if limit_bytes < 0:
        raise ValueError(f"set_cpu_cache_limit: limit_bytes must be >= 0, got {limit_bytes}")
    previous = _C.cpu_block_cache_stats()["limit_bytes"]
    _C.set_cpu_block_cache_limit(int(limit_bytes))
    return previous


def empty_cpu_cache():
    """Releases the CPU block cache's idle blocks to the system (blocks held by tensors stay)."""
    if HAS_COMPILED_OPS:
        _C.empty_cpu_block_cache()


def _cache_limit_from_environment(variable="SPARSE_RT_CPU_CACHE_LIMIT_MB"):
    text = os.environ.get(variable, "").strip()
    if not text:
        return
    try:
        set_cpu_cache_limit(int(text) << 20)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number of MiB >= 0, got {text!r}") from None


if HAS_COMPILED_OPS:
    _cache_limit_from_environment()


# csr_linear's two CUDA kernels where both apply (fp16/bf16 from batch 8): csrc/kernels/cuda/csr_spmm.cu.
CSR_CUDA_KERNEL_VARIABLE = "SPARSE_RT_CSR_CUDA_KERNEL"
CSR_CUDA_KERNELS = ("subwarp", "tensor_cores")


@contextlib.contextmanager
def csr_cuda_kernel(kernel):
    """Inside the block, CUDA csr_linear runs `kernel` ("subwarp" or "tensor_cores") where both of
    its kernels apply, instead of the one its cost model picks; None: the cost model. It sets
    SPARSE_RT_CSR_CUDA_KERNEL, which the launcher reads on every call (a CUDA graph keeps the kernel
    chosen when it was captured), so it is process-wide: for tests and benchmarks."""
    if kernel is not None and kernel not in CSR_CUDA_KERNELS:
        raise ValueError(f"csr_cuda_kernel: {kernel!r} is not one of {CSR_CUDA_KERNELS} (or None)")
    saved = os.environ.pop(CSR_CUDA_KERNEL_VARIABLE, None)
    if kernel is not None:
        os.environ[CSR_CUDA_KERNEL_VARIABLE] = kernel
    try:
        yield
    finally:
        os.environ.pop(CSR_CUDA_KERNEL_VARIABLE, None)
        if saved is not None:
            os.environ[CSR_CUDA_KERNEL_VARIABLE] = saved

"""Build of sparse_rt and its compiled ops, sparse_rt._C.

The CPU kernels are always built. The CUDA kernels and their torch binding are built when the
installed torch is a CUDA build (torch.version.cuda) and nvcc is found; SPARSE_RT_CUDA=0|1 forces
either way and SPARSE_RT_CUDA_ARCHS (e.g. "8.0;9.0") picks the architectures. Build without
isolation (pip install --no-build-isolation ...) so that the torch already installed is the one
compiled against.
"""

import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join("csrc", pattern)))
    return files


def _resolve_cuda():
    """Returns (build_cuda, reason)."""
    import torch

    forced = os.environ.get("SPARSE_RT_CUDA")
    torch_cuda = torch.version.cuda
    nvcc = cpp_extension.CUDA_HOME and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    if forced == "0":
        return False, "SPARSE_RT_CUDA=0"
    if forced == "1":
        if not torch_cuda:
            sys.exit("SPARSE_RT_CUDA=1 but the installed torch is a CPU-only build "
                     f"({torch.__version__}); install a CUDA build of torch first")
        if not nvcc:
            sys.exit("SPARSE_RT_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return True, "SPARSE_RT_CUDA=1"
    if forced not in (None, ""):
        sys.exit(f"SPARSE_RT_CUDA must be 0 or 1, got {forced!r}")
    if not torch_cuda:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if not nvcc:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch_cuda} and nvcc at {cpp_extension.CUDA_HOME}"


def _extension():
    import torch

    build_cuda, reason = _resolve_cuda()
    sources = _sources("torch/*.cpp", "torch/cpu/*.cpp", "kernels/cpu/*.cpp")
    # at::parallel_for is inlined as `omp parallel`: without -fopenmp it would run serially. The
    # resulting libgomp.so.1 dependency resolves to the copy torch already loaded (one thread pool).
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    extra = {"cxx": cxx_flags}
    define_macros = []
    kind = cpp_extension.CppExtension
    if build_cuda:
        kind = cpp_extension.CUDAExtension
        sources += _sources("kernels/cuda/*.cu", "torch/cuda/*.cu")
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]
        define_macros.append(("SPARSE_RT_WITH_CUDA", None))
        archs = os.environ.get("SPARSE_RT_CUDA_ARCHS")
        if archs:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    print("sparse_rt build configuration:")
    print(f"  torch          {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA kernels   {'yes' if build_cuda else 'no'} ({reason})")
    if build_cuda:
        print(f"  CUDA archs     {os.environ.get('TORCH_CUDA_ARCH_LIST', 'torch default')}")
    print(f"  sources        {len(sources)} files")
    return kind(
        "sparse_rt._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="sparse_rt",
    version="0.1.0",
    description="Sparse inference runtime for PyTorch: pruned checkpoints to fast CPU/CUDA kernels",
    packages=find_packages(include=["sparse_rt", "sparse_rt.*"]),
    python_requires=">=3.10",
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["sparse-rt=sparse_rt.cli:main"]},
)

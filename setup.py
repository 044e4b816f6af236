"""Build of sparse_rt's compiled ops, sparse_rt._C; the project's metadata is in pyproject.toml.

The CPU kernels are always built. The onnxruntime kernels of the "sparse" ONNX
flavour (csrc/onnxruntime) are built in when onnxruntime's headers are found
($SPARSE_RT_ORT_INCLUDE, or the copy tools/onnxruntime_headers.py caches; `make install`
fetches it). The CUDA kernels and their torch binding are built when the
installed torch is a CUDA build (torch.version.cuda) and nvcc is found; SPARSE_RT_CUDA=0|1 forces
either way and SPARSE_RT_CUDA_ARCHS (e.g. "8.0;9.0"; default: build_flags.json's cuda_arch_list,
"8.0;9.0+PTX") picks the architectures. Build without
isolation (pip install --no-build-isolation ...) so that the torch already installed is the one
compiled against. Compile flags and the nvcc lookup come from tools/build_config.py.
"""

import glob
import hashlib
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _build_config():
    """tools/build_config.py, loaded by path (tools/ is not a package and not on sys.path here)."""
    path = os.path.join(ROOT, "tools", "build_config.py")
    spec = importlib.util.spec_from_file_location("sparse_rt_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_torch():
    try:
        import torch
    except ImportError:
        sys.exit("sparse_rt's extension is compiled against the installed torch, and none was found.\n"
                 "Install torch first, then build without build isolation, e.g.\n"
                 "    pip install torch==2.13.0\n"
                 "    pip install --no-build-isolation -e .\n"
                 "(`make install` does both).")
    return torch


def _sources(*patterns):
    files = []
    for pattern in patterns:
        files += sorted(glob.glob(os.path.join("csrc", pattern)))
    return files


def _resolve_cuda(torch, nvcc):
    """Returns (build_cuda, reason)."""
    forced = os.environ.get("SPARSE_RT_CUDA")
    torch_cuda = torch.version.cuda
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
    return True, f"torch CUDA {torch_cuda} and nvcc at {nvcc}"


def _extension_and_build_ext():
    """(sparse_rt._C, its build_ext command); the only place torch is imported."""
    config = _build_config()
    nvcc = config.find_nvcc()
    if nvcc and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        # torch finds its toolkit on import of cpp_extension, in the same order: make it this one.
        os.environ["CUDA_HOME"] = config.find_cuda_home()
    torch = _import_torch()
    from torch.utils import cpp_extension

    build_cuda, reason = _resolve_cuda(torch, nvcc)
    sources = _sources("torch/*.cpp", "torch/cpu/*.cpp", "kernels/cpu/*.cpp")
    extra = {"cxx": config.cxx_flags()}
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    ort_include = config.onnxruntime_include_dir()
    if ort_include:
        # The sparse ONNX flavour's native kernels: onnxruntime loads this library by path.
        sources += _sources("onnxruntime/*.cpp")
        include_dirs.append(str(ort_include))
        define_macros.append(("SPARSE_RT_WITH_ONNXRUNTIME", None))
    kind = cpp_extension.CppExtension
    if build_cuda:
        kind = cpp_extension.CUDAExtension
        # The kernels are nvcc's; the CUDA binding (torch/cuda) is host code for the C++ compiler.
        sources += _sources("kernels/cuda/*.cu", "torch/cuda/*.cpp")
        extra["nvcc"] = config.nvcc_flags()
        define_macros.append(("SPARSE_RT_WITH_CUDA", None))
        archs = os.environ.get("SPARSE_RT_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs or config.cuda_arch_list()
    print("sparse_rt build configuration:")
    print(f"  torch          {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA kernels   {'yes' if build_cuda else 'no'} ({reason})")
    if build_cuda:
        print(f"  CUDA archs     {os.environ['TORCH_CUDA_ARCH_LIST']}")
    ort_status = "kernels built" if ort_include else "no kernels (headers not found: make install fetches them)"
    print(f"  onnxruntime    {ort_status}")
    print(f"  sources        {len(sources)} files")
    cxx = config.host_compiler()
    print(f"  C++ compiler   {cxx} (libstdc++ {config.compiler_libstdcxx(cxx)})")
    mismatch = config.libstdcxx_mismatch(cxx)
    if mismatch:
        print(f"  WARNING        {mismatch}")
    extension = kind(
        "sparse_rt._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=config.cxx_link_flags(),
    )
    return extension, _persistent_build_ext(cpp_extension.BuildExtension.with_options(use_ninja=True), torch)


def _persistent_build_ext(base, torch):
    """base with its object files under build/ rather than in the temporary folder that pip's
    (editable) wheel builds use, so that a rebuild recompiles only what changed (ninja). One folder
    per environment (its include folder is on the command line) and torch."""

    class BuildExt(base):
        def finalize_options(self):
            if self.build_temp is None:
                env = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]
                tag = f"{sys.implementation.cache_tag}-torch{torch.__version__}-{env}"
                self.build_temp = os.path.join(ROOT, "build", f"ext-{tag}")
            super().finalize_options()

    return BuildExt


def main():
    extension, build_ext = _extension_and_build_ext()
    setup(ext_modules=[extension], cmdclass={"build_ext": build_ext})


if __name__ == "__main__":
    main()

"""The build tools: compile flags and toolkit lookup (tools/build_config.py) and the checks that
tools/cuda_binding_check.py runs on a linked extension (here on small libraries built by the test)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compiler_with_libstdcxx

import sparse_rt  # noqa: F401  (loads the extension, which defines the ops)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import build_config  # noqa: E402
import cuda_binding_check  # noqa: E402


def test_nvcc_flags_hold_the_flags_torch_gives_every_extension():
    # tools/cuda_check.py compiles the kernels with build_config.nvcc_flags() alone; the extension build
    # gets torch's defaults as well, so they must be among ours for both to compile alike.
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    assert set(COMMON_NVCC_FLAGS) <= set(build_config.nvcc_flags())
    assert build_config.std_flag() in build_config.nvcc_flags()


@pytest.mark.parametrize("arch_list, sms", [("8.0;9.0+PTX", ["80", "90"]), ("7.5 8.6", ["75", "86"])])
def test_cuda_check_compiles_the_architectures_of_the_build(monkeypatch, arch_list, sms):
    monkeypatch.setattr(build_config, "cuda_arch_list", lambda: arch_list)
    assert build_config.cuda_check_archs() == sms


def _toolkit(root: Path) -> Path:
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").touch()
    (root / "bin").mkdir()
    return root


def test_cuda_home_of_an_nvcc_linked_from_elsewhere(tmp_path, monkeypatch):
    toolkit = _toolkit(tmp_path / "cuda-13.0")
    nvcc = toolkit / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    (tmp_path / "path").mkdir()
    (tmp_path / "path" / "nvcc").symlink_to(nvcc)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert build_config.find_cuda_home() == str(toolkit)


def test_cuda_home_of_an_nvcc_wrapper_script(tmp_path, monkeypatch):
    # A script in a folder without a toolkit, running the real nvcc: nvcc's dry run names the toolkit.
    toolkit = _toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "bin").mkdir()
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.write_text(f"#!/bin/sh\necho '#$ TOP={toolkit}/bin/..' >&2\n")
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert build_config.find_cuda_home() == str(toolkit)
    assert build_config.find_nvcc() is None  # the fake toolkit has no bin/nvcc


def test_schema_ops_are_the_ops_the_extension_defines():
    defined = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("sparse_rt::"))
    assert sorted(cuda_binding_check.schema_ops()) == defined


needs_toolchain = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("g++", "nm", "readelf")), reason="needs g++, nm and readelf"
)


def _shared_library(tmp_path: Path, name: str, sources: dict[str, str], *link: str) -> Path:
    paths = []
    for file, text in sources.items():
        (tmp_path / file).write_text(text)
        paths.append(str(tmp_path / file))
    out = tmp_path / name
    subprocess.run(["g++", "-shared", "-fPIC", "-O0", *paths, "-o", str(out), *link], check=True)
    return out


# What TORCH_LIBRARY_IMPL(sparse_rt, CUDA, m) and an op's implementation leave in a translation unit.
REGISTERED = """
namespace sparse_rt {
namespace { int OP_cuda(int x) { return x + 1; } }
static int (*TORCH_LIBRARY_IMPL_static_init_sparse_rt_CUDA_0)(int) = &OP_cuda;
int use_OP() { return TORCH_LIBRARY_IMPL_static_init_sparse_rt_CUDA_0(1); }
}
"""
UNREGISTERED = """
namespace sparse_rt {
namespace { int OP_cuda(int x) { return x + 2; } }
int (*keep_OP)(int) = &OP_cuda;
}
"""


@needs_toolchain
def test_an_op_counts_as_registered_only_beside_a_cuda_registration(tmp_path):
    library = _shared_library(tmp_path, "libops.so", {
        "a.cpp": REGISTERED.replace("OP", "csr_linear"),
        "b.cpp": UNREGISTERED.replace("OP", "bsr_linear"),  # defined, but in no registering unit
    })
    ops = ["csr_linear", "bsr_linear", "csr_conv2d"]
    assert cuda_binding_check.missing_cuda_ops(library, ops) == ["bsr_linear", "csr_conv2d"]


@needs_toolchain
def test_undefined_symbols_are_those_no_linked_library_defines(tmp_path):
    _shared_library(tmp_path, "libdep.so", {"dep.cpp": 'extern "C" int dep_defined() { return 1; }'})
    library = _shared_library(tmp_path, "libuser.so", {"user.cpp": """
        extern "C" int dep_defined();
        extern "C" int nowhere_defined();
        extern "C" int PyLong_AsLong();  // Python's C API: the interpreter defines it
        int use() { return dep_defined() + nowhere_defined() + PyLong_AsLong(); }
    """}, f"-L{tmp_path}", "-ldep")
    missing, undefined = cuda_binding_check.unresolved_symbols(library, [tmp_path])
    assert (missing, undefined) == ([], ["nowhere_defined"])
    os.remove(tmp_path / "libdep.so")
    missing, undefined = cuda_binding_check.unresolved_symbols(library, [tmp_path])
    assert missing == ["libdep.so"] and "dep_defined" in undefined


def test_a_compiler_newer_than_the_loaded_libstdcxx_is_named(tmp_path):
    import torch  # noqa: F401  (loads the libstdc++ the extension will run against)

    loaded = build_config.loaded_libstdcxx()
    if loaded is None:
        pytest.skip("this process has no libstdc++ loaded (not Linux)")
    newer, library = compiler_with_libstdcxx(tmp_path / "new", 999)
    assert build_config.compiler_libstdcxx(newer) == str(library)
    problem = build_config.libstdcxx_mismatch(newer)
    assert problem and str(library) in problem and loaded in problem and "LD_LIBRARY_PATH" in problem
    older, _ = compiler_with_libstdcxx(tmp_path / "old", 1)
    assert build_config.libstdcxx_mismatch(older) is None
    assert build_config.libstdcxx_mismatch(str(tmp_path / "no-such-compiler")) is None

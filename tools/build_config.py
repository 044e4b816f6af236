#!/usr/bin/env python3
"""Build settings of sparse_rt in one place: compile flags (from build_flags.json) and the nvcc lookup.

Used by setup.py, tools/cuda_check.py and the Makefile; CMakeLists.txt reads build_flags.json itself.
Standard library only, so that it runs before anything is installed. From the shell:

    python tools/build_config.py nvcc            # path of nvcc, exit status 1 when there is none
    python tools/build_config.py flags           # the resolved flags as JSON
    python tools/build_config.py build-requires  # pyproject's [build-system] requires, one a line
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS_FILE = Path(__file__).resolve().with_name("build_flags.json")


def _flags() -> dict:
    with open(FLAGS_FILE, encoding="utf-8") as f:
        return json.load(f)


def std_flag() -> str:
    """-std=c++N of the host and the CUDA code."""
    return f"-std=c++{_flags()['cxx_standard']}"


def cxx_flags() -> list[str]:
    """g++ flags of the extension's C++ sources."""
    return [std_flag(), *_flags()["cxx"]]


def cxx_link_flags() -> list[str]:
    return list(_flags()["cxx_link"])


def nvcc_flags() -> list[str]:
    """nvcc flags of every .cu file (the extension and tools/cuda_check.py)."""
    return [std_flag(), *_flags()["nvcc"]]


def cuda_arch_list() -> str:
    """The extension's default TORCH_CUDA_ARCH_LIST (PTX included, so newer GPUs run)."""
    return _flags()["cuda_arch_list"]


def cuda_check_archs() -> list[str]:
    """The SM versions of cuda_arch_list ("8.0;9.0+PTX" -> ["80", "90"]), which tools/cuda_check.py
    compiles by default."""
    return [a.removesuffix("+PTX").replace(".", "") for a in re.split(r"[;\s]+", cuda_arch_list()) if a]


def cache_root() -> Path:
    """Where the tools keep what they download once: ~/.cache/sparse_rt (or $XDG_CACHE_HOME/sparse_rt)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparse_rt"


# onnxruntime's C/C++ API headers (tools/onnxruntime_headers.py fetches them), for the native kernels of
# the "sparse" ONNX flavour (csrc/onnxruntime), built into the extension where they are found.
ONNXRUNTIME_HEADERS_TAG = "onnxruntime-include-api29"
ONNXRUNTIME_KEY_HEADER = "onnxruntime_cxx_api.h"


def onnxruntime_include_dir() -> Path | None:
    """$SPARSE_RT_ORT_INCLUDE, else the headers tools/onnxruntime_headers.py cached; None when
    neither holds them."""
    explicit = os.environ.get("SPARSE_RT_ORT_INCLUDE")
    folder = Path(explicit) if explicit else cache_root() / ONNXRUNTIME_HEADERS_TAG
    return folder if (folder / ONNXRUNTIME_KEY_HEADER).is_file() else None


def find_cuda_home() -> str | None:
    """The CUDA toolkit the build and the check use: $CUDA_HOME or $CUDA_PATH, else the toolkit of
    the nvcc on PATH, else /usr/local/cuda when it exists. setup.py exports it as CUDA_HOME, so torch
    compiles (headers, libcudart) with this same toolkit."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return home
        # A wrapper script (e.g. /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc), whose
        # parent folder holds no toolkit: nvcc names its own (TOP) in a dry run.
        top = _nvcc_top(nvcc)
        if top:
            return top
    return "/usr/local/cuda" if os.path.exists("/usr/local/cuda") else None


def _nvcc_top(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
    return os.path.normpath(match.group(1).strip()) if match else None


def find_nvcc() -> str | None:
    """Path of the toolkit's nvcc, or None when there is none."""
    home = find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    return nvcc if nvcc and os.path.isfile(nvcc) and os.access(nvcc, os.X_OK) else None


# A C++ compiler whose libstdc++ is newer than the one the Python process has loaded compiles
# against headers that library does not match. Seen on the GPU machine (2026-12-04: CXX=/opt/gcc/bin/g++,
# torch 2.11): the extension loaded and its kernels ran, but every error message that formatted a
# number crashed the process (benchmarks/results/cuda-2026-12-04.json, tests phase).
_LIBSTDCXX = re.compile(r"libstdc\+\+\.so\.(\d+(?:\.\d+)*)$")


def libstdcxx_version(path: str | None) -> tuple[int, ...] | None:
    """(6, 0, 33) for a libstdc++.so.6.0.33 (symlinks followed), None when path names none."""
    match = _LIBSTDCXX.search(os.path.realpath(path)) if path else None
    return tuple(int(n) for n in match.group(1).split(".")) if match else None


def host_compiler() -> str:
    """The C++ compiler torch's extension build runs: $CXX, else c++."""
    return os.environ.get("CXX") or "c++"


def compiler_libstdcxx(cxx: str) -> str | None:
    """The libstdc++ that cxx links against (its headers' library), or None (not g++, not found)."""
    try:
        out = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip()
    return os.path.realpath(path) if out.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def loaded_libstdcxx() -> str | None:
    """The libstdc++ this process has loaded (Linux; None elsewhere or before any C++ library loads)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1]
                if libstdcxx_version(path):
                    return os.path.realpath(path)
    except OSError:
        return None
    return None


def libstdcxx_mismatch(cxx: str) -> str | None:
    """Why cxx's build would not match the libstdc++ loaded here (call after importing torch), or None."""
    built, loaded = compiler_libstdcxx(cxx), loaded_libstdcxx()
    built_version, loaded_version = libstdcxx_version(built), libstdcxx_version(loaded)
    if built_version and loaded_version and built_version > loaded_version:
        return (f"{cxx} compiles against {built} but this Python loads {loaded}, which is older: "
                f"choose another compiler (CXX=...) or put {os.path.dirname(built)} first on LD_LIBRARY_PATH")
    return None


def build_requires(exclude: tuple[str, ...] = ()) -> list[str]:
    """[build-system] requires of pyproject.toml, less the named projects."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib

        requires = tomllib.loads(text)["build-system"]["requires"]
    except ModuleNotFoundError:  # Python 3.10: the array is a flat list of strings
        block = re.search(r"^\[build-system\][^\[]*?requires\s*=\s*\[(.*?)\]", text, re.S | re.M)
        requires = re.findall(r"\"([^\"]+)\"", block.group(1)) if block else []
    name = re.compile(r"^[A-Za-z0-9._-]+")
    skip = {e.lower() for e in exclude}
    return [r for r in requires if name.match(r).group(0).lower() not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("nvcc", help="print the path of nvcc; exit status 1 when there is none")
    sub.add_parser("flags", help="print the resolved compile flags as JSON")
    req = sub.add_parser("build-requires", help="print pyproject's build requirements, one a line")
    req.add_argument("--exclude", action="append", default=[], help="leave out this project (repeatable)")
    args = parser.parse_args(argv)

    if args.command == "nvcc":
        nvcc = find_nvcc()
        if not nvcc:
            print("nvcc not found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
            return 1
        print(nvcc)
    elif args.command == "flags":
        print(json.dumps({"cxx": cxx_flags(), "cxx_link": cxx_link_flags(), "nvcc": nvcc_flags(),
                          "cuda_check_archs": cuda_check_archs(), "cuda_arch_list": cuda_arch_list()}, indent=2))
    else:
        print("\n".join(build_requires(tuple(args.exclude))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build the extension's CUDA configuration against a CUDA build of torch, without a GPU, and check it.

This project's machines have nvcc and a CPU-only torch, whose headers and libraries cannot build the
CUDA torch binding (csrc/torch/cuda). This tool:

1. finds a CUDA build of the installed torch's release: --torch-dir or $SPARSE_RT_CUDA_TORCH (a folder
   holding torch/, e.g. a virtualenv's site-packages), else the copy cached under
   ~/.cache/sparse_rt (or $XDG_CACHE_HOME/sparse_rt), else downloads it there once with pip: the torch
   wheel alone (about 530 MB for 2.13.0), which is the CUDA build on the package registry. When it
   cannot be downloaded, it says so and exits 0 (skipped);
2. runs setup.py build_ext with SPARSE_RT_CUDA=1 (setup.py's sources, flags and architectures) in a
   temporary folder, compiling and linking sparse_rt._C;
3. checks the linked library: every op of the schema (csrc/torch/registration.cpp) has its CUDA
   implementation `<op>_cuda` in a translation unit holding a TORCH_LIBRARY_IMPL(sparse_rt, CUDA)
   registration, and every symbol it leaves undefined is defined by a library it links (torch's, the
   CUDA runtime, the C/C++ runtimes) or is Python's C API.

The cached torch cannot be imported: its libtorch_cuda.so needs cuDNN, cuBLAS, NCCL and more (the
nvidia-* wheels, several GB), which are not downloaded. So setup.py runs on the installed torch of
the same release, whose torch.utils.cpp_extension is the same file, told the CUDA build's version and
pointed at its headers and libraries; the library is checked from its symbol tables, not loaded.

A pass is remembered under the cache folder, keyed by a digest of everything that goes into the
build (csrc/, setup.py, the build settings, this tool, torch, nvcc, the C++ compiler, Python and the
environment variables the build reads): a later run with the same inputs reports it and builds nothing
(--force builds anyway).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_config  # noqa: E402  (tools/build_config.py, beside this file)

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "csrc" / "torch" / "registration.cpp"
# The environment variables setup.py and torch's extension build read.
BUILD_ENV = ("SPARSE_RT_CUDA_ARCHS", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME", "CUDA_PATH", "CC", "CXX",
             "CFLAGS", "CXXFLAGS", "LDFLAGS", "NVCC_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_PREPEND_FLAGS")


def say(message: str) -> None:
    print(f"cuda-binding-check: {message}", flush=True)


def wheel_version(torch_dir: Path) -> tuple[str, str | None] | None:
    """(torch.__version__, torch.version.cuda) of the torch package at torch_dir, read from its
    version.py without importing it; None when there is no torch there."""
    try:
        text = (torch_dir / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    version = re.search(r"^__version__\s*=\s*'([^']+)'", text, re.M)
    cuda = re.search(r"^cuda\b[^=]*=\s*'([^']+)'", text, re.M)
    return (version.group(1), cuda.group(1) if cuda else None) if version else None


def download_torch(release: str, target: Path) -> str | None:
    """pip-installs the registry's torch==release (the wheel alone) into target, atomically.
    Returns None on success, else why it failed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # pip's find-links folder and configuration may hold the CPU wheel, which pip would prefer.
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
           "--progress-bar", "off", "--target", str(partial), f"torch=={release}"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            return lines[-1] if lines else f"pip exited with status {proc.returncode}"
        try:
            partial.rename(target)
        except OSError:
            if not (target / "torch").is_dir():  # not a concurrent run that got there first
                raise
        return None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def find_cuda_torch(release: str, explicit: str | None) -> Path | None:
    """The torch/ folder of a CUDA build of torch `release`; None (after saying why) when there is
    none to be had, which is a skip. An explicit folder that is not one is an error (SystemExit)."""
    if explicit:
        torch_dir = Path(explicit) / "torch"
        found = wheel_version(torch_dir)
        if not found or not found[1]:
            sys.exit(f"cuda-binding-check: {explicit} holds no CUDA build of torch (torch/version.py)")
        return torch_dir
    target = build_config.cache_root() / f"torch-{release}-cuda"
    if not wheel_version(target / "torch"):
        say(f"downloading torch=={release} (the registry's CUDA build: the torch wheel alone, no nvidia-* "
            f"packages; once) into {target} ...")
        start = time.monotonic()
        error = download_torch(release, target)
        if error:
            say(f"skipped: could not download torch=={release}: {error}")
            return None
        say(f"downloaded in {time.monotonic() - start:.0f} s, {folder_mb(target):.0f} MB on disk")
    version, cuda = wheel_version(target / "torch") or ("?", None)
    if not cuda:
        say(f"skipped: the registry's torch=={release} ({version}, in {target}) is not a CUDA build")
        return None
    return target / "torch"


def tool_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout
    except OSError:
        return ""


def input_digest(torch_dir: Path, nvcc: str) -> str:
    """Digest of every input of the build (see the module docstring)."""
    h = hashlib.sha256()
    files = [REPO / "setup.py", REPO / "pyproject.toml", Path(build_config.__file__), build_config.FLAGS_FILE,
             Path(__file__).resolve(), *sorted(p for p in (REPO / "csrc").rglob("*") if p.is_file())]
    for path in files:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr((wheel_version(torch_dir), importlib.metadata.version("torch"))).encode())
    h.update((torch_dir / "utils" / "cpp_extension.py").read_bytes())
    h.update(tool_version([nvcc, "--version"]).encode())
    h.update(tool_version([os.environ.get("CXX", "c++"), "--version"]).encode())
    h.update(sys.version.encode())
    h.update(repr([(k, os.environ.get(k)) for k in BUILD_ENV]).encode())
    return h.hexdigest()[:16]


def build(torch_dir: Path, build_dir: Path, jobs: int) -> None:
    """Runs setup.py build_ext (SPARSE_RT_CUDA=1) in this process, on the installed torch pointed at
    the CUDA build in torch_dir (see the module docstring)."""
    import torch
    from torch.utils import cpp_extension

    version, cuda = wheel_version(torch_dir)
    installed = Path(cpp_extension.__file__).read_bytes()
    if installed != (torch_dir / "utils" / "cpp_extension.py").read_bytes():
        sys.exit(f"cuda-binding-check: the installed torch {torch.__version__} is not the release of the CUDA "
                 f"build {version} in {torch_dir} (their torch.utils.cpp_extension differ)")
    torch.__version__ = torch.torch_version.TorchVersion(version)
    torch.version.cuda = cuda
    cpp_extension._TORCH_PATH = str(torch_dir)  # include_paths(): torch_dir/include
    cpp_extension.TORCH_LIB_PATH = str(torch_dir / "lib")  # library_paths()
    cpp_extension.CUDA_HOME = build_config.find_cuda_home()  # None on import: the torch had no CUDA

    os.environ["SPARSE_RT_CUDA"] = "1"
    os.environ["MAX_JOBS"] = str(jobs)
    os.chdir(REPO)
    sys.argv = ["setup.py", "build_ext", "--build-temp", str(build_dir / "obj"), "--build-lib", str(build_dir / "lib")]
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")


def schema_ops() -> list[str]:
    """The ops defined in csrc/torch/registration.cpp (m.def("name(...) -> ...")."""
    return re.findall(r"\bm\.def\(\s*\"(\w+)\(", SCHEMA.read_text(encoding="utf-8"))


def local_symbols_by_file(library: Path) -> dict[str, set[str]]:
    """The local symbols of library's symbol table, grouped by the source file named by the STT_FILE
    symbol that precedes them (the ELF order). Files of the same name are merged."""
    out = subprocess.run(["readelf", "-sW", str(library)], capture_output=True, text=True, check=True).stdout
    groups: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[4] != "LOCAL":
            continue
        if fields[3] == "FILE":
            current = groups.setdefault(fields[7], set())
        elif current is not None:
            current.add(fields[7])
    return groups


def missing_cuda_ops(library: Path, ops: list[str]) -> list[str]:
    """The ops without `sparse_rt::(anonymous namespace)::<op>_cuda` in a translation unit that holds a
    TORCH_LIBRARY_IMPL(sparse_rt, CUDA) registration (its static TorchLibraryInit object)."""
    registration = re.compile(r"TORCH_LIBRARY_IMPL_static_init_sparse_rt_CUDA_\d+")
    registered = set()
    for symbols in local_symbols_by_file(library).values():
        if any(registration.search(s) for s in symbols):
            registered |= symbols
    # Itanium mangling of a function in sparse_rt's anonymous namespace.
    impl = {op: f"_ZN9sparse_rt12_GLOBAL__N_1{len(op) + 5}{op}_cudaE" for op in ops}
    return [op for op in ops if not any(s.startswith(impl[op]) for s in registered)]


def dynamic_symbols(library: Path, defined: bool) -> set[str]:
    """Names (without version) of library's dynamic symbols: defined ones, or undefined non-weak ones."""
    flag = "--defined-only" if defined else "--undefined-only"
    out = subprocess.run(["nm", "-D", flag, str(library)], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and (defined or fields[-2] == "U"):
            names.add(fields[-1].split("@")[0])
    return names


def needed_libraries(library: Path) -> list[str]:
    out = subprocess.run(["readelf", "-dW", str(library)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def locate(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    match = re.search(rf"^\s*{re.escape(name)} \(.*\) => (\S+)$", out, re.M)
    return Path(match.group(1)) if match else None


def unresolved_symbols(library: Path, folders: list[Path]) -> tuple[list[str], list[str]]:
    """(the NEEDED libraries not found, library's undefined symbols that none of its NEEDED libraries
    define, less Python's C API, which the interpreter provides)."""
    defined: set[str] = set()
    missing = []
    for name in needed_libraries(library):
        path = locate(name, folders)
        if path is None:
            missing.append(name)
        else:
            defined |= dynamic_symbols(path, defined=True)
    undefined = dynamic_symbols(library, defined=False) - defined
    return missing, sorted(s for s in undefined if not s.startswith(("Py", "_Py")))


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    return subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()


def check(library: Path, torch_dir: Path) -> list[str]:
    """The problems of the linked library (none: it passes)."""
    problems = []
    missing_ops = missing_cuda_ops(library, schema_ops())
    if missing_ops:
        problems.append(f"no CUDA implementation registered for {', '.join(missing_ops)}")
    cuda_home = build_config.find_cuda_home()
    folders = [torch_dir / "lib"]
    if cuda_home:
        folders += [Path(cuda_home) / "lib64", Path(cuda_home) / "lib"]
    missing_libs, undefined = unresolved_symbols(library, folders)
    if missing_libs:
        problems.append(f"linked libraries not found: {', '.join(missing_libs)}")
    if undefined:
        problems.append(f"{len(undefined)} undefined symbols defined by no linked library:\n  "
                        + "\n  ".join(demangle(undefined)))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-dir", default=os.environ.get("SPARSE_RT_CUDA_TORCH"),
                        help="folder holding a CUDA build of torch/ (default: $SPARSE_RT_CUDA_TORCH, else the "
                             "cached download)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--force", action="store_true", help="build even if these inputs passed before")
    parser.add_argument("--build", nargs=2, metavar=("TORCH_DIR", "BUILD_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.build:  # the child process that runs setup.py
        build(Path(args.build[0]), Path(args.build[1]), args.jobs)
        return 0

    nvcc = build_config.find_nvcc()
    if not nvcc:
        print("cuda-binding-check: nvcc not found (set CUDA_HOME)", file=sys.stderr)
        return 2
    try:
        release = importlib.metadata.version("torch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        print("cuda-binding-check: needs the installed torch (`make install`)", file=sys.stderr)
        return 2
    torch_dir = find_cuda_torch(release, args.torch_dir)
    if torch_dir is None:
        return 0
    version, cuda = wheel_version(torch_dir)

    digest = input_digest(torch_dir, nvcc)
    passed = build_config.cache_root() / "cuda-binding-check" / f"{digest}.passed"
    if passed.exists() and not args.force:
        say(f"passed before with these inputs (torch {version}, digest {digest}; --force rebuilds)")
        return 0

    say(f"building sparse_rt._C against torch {version} (CUDA {cuda}, {torch_dir}) with {nvcc} ...")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sparse_rt_cuda_binding_") as tmp:
        build_dir = Path(args.keep).resolve() if args.keep else Path(tmp)
        log_path = build_dir / "build.log"
        build_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--jobs", str(args.jobs), "--build", str(torch_dir),
                                   str(build_dir)], stdout=log, stderr=subprocess.STDOUT)
        libraries = sorted((build_dir / "lib" / "sparse_rt").glob("_C*.so"))
        if proc.returncode != 0 or not libraries:
            print(log_path.read_text(errors="replace"), file=sys.stderr)
            say(f"FAILED: the build exited with status {proc.returncode}")
            return 1
        say(f"compiled and linked in {time.monotonic() - start:.0f} s")
        problems = check(libraries[0], torch_dir)
    for problem in problems:
        say(f"FAILED: {problem}")
    if problems:
        return 1
    passed.parent.mkdir(parents=True, exist_ok=True)
    passed.touch()
    say(f"passed: CUDA implementations of {', '.join(schema_ops())} registered, every symbol resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Compile every csrc/kernels/cuda/*.cu with nvcc and report registers and spills per kernel.

The kernels are torch-free, so this runs on any machine with the CUDA toolkit (no GPU, no CUDA
torch). It compiles each file once per architecture with `-Xptxas -v`, prints one line per kernel
and exits non-zero on a compile error or on any spill store/load. The nvcc flags (-std=c++N, the
__CUDA_NO_HALF_* defines torch gives every extension, so code relying on implicit half conversions
fails here too), the default architectures and the nvcc lookup are the extension build's
(tools/build_config.py).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_config  # noqa: E402  (tools/build_config.py, beside this file)

REPO = Path(__file__).resolve().parent.parent
KERNEL_DIR = REPO / "csrc" / "kernels" / "cuda"

ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def find_nvcc(explicit: str | None) -> str | None:
    return explicit or build_config.find_nvcc()


def demangle(names: list[str]) -> dict[str, str]:
    """c++filt when available (names stay mangled otherwise), anonymous namespace dropped."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout
    pretty = out.splitlines()
    if len(pretty) != len(names):
        return {n: n for n in names}
    return {
        n: re.sub(r"\(.*\)$", "", p.replace("(anonymous namespace)::", "").replace("sparse_rt::cuda::", ""))
        for n, p in zip(names, pretty)
    }


def compile_one(nvcc: str, source: Path, arch: str, outdir: Path) -> tuple[Path, str, int, str]:
    cmd = [
        nvcc, "-c", *build_config.nvcc_flags(),
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "-Xptxas", "-v",
        str(source), "-o", str(outdir / f"{source.stem}.sm_{arch}.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return source, arch, proc.returncode, proc.stdout + proc.stderr


def parse(log: str) -> list[tuple[str, str, int, int, int]]:
    """(mangled kernel, sm, registers, spill stores, spill loads) for each entry function."""
    kernels = []
    current = None
    spill = (0, 0)
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current, spill = (m.group(1), m.group(2)), (0, 0)
        elif current and (m := SPILLS.search(line)):
            spill = (int(m.group(1)), int(m.group(2)))
        elif current and (m := REGS.search(line)):
            kernels.append((current[0], current[1], int(m.group(1)), *spill))
            current = None
    return kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_archs = ",".join(build_config.cuda_check_archs())
    parser.add_argument("--nvcc", help="nvcc to use (default: $CUDA_HOME/bin/nvcc, PATH, /usr/local/cuda)")
    parser.add_argument("--arch", default=default_archs, help=f"comma-separated SM versions (default {default_archs})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel nvcc runs")
    args = parser.parse_args(argv)

    nvcc = find_nvcc(args.nvcc)
    if not nvcc or (not Path(nvcc).exists() and not shutil.which(nvcc)):
        where = f"at {nvcc!r}" if nvcc else "(set CUDA_HOME)"
        print(f"cuda_check: nvcc not found {where} (or use --nvcc PATH)", file=sys.stderr)
        return 2
    archs = [a.strip().removeprefix("sm_") for a in args.arch.split(",") if a.strip()]
    sources = sorted(KERNEL_DIR.glob("*.cu"))
    if not sources:
        print(f"cuda_check: no .cu files under {KERNEL_DIR}", file=sys.stderr)
        return 2

    failed = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparse_rt_cuda_check_") as tmp:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            jobs = [pool.submit(compile_one, nvcc, s, a, Path(tmp)) for s in sources for a in archs]
            for job in jobs:
                source, arch, rc, log = job.result()
                if rc != 0:
                    failed = True
                    print(f"FAILED {source.relative_to(REPO)} sm_{arch}:\n{log}", file=sys.stderr)
                    continue
                rows += [(source.name, *k) for k in parse(log)]

    names = demangle(sorted({r[1] for r in rows}))
    spilling = [r for r in rows if r[4] or r[5]]
    width = max((len(names[r[1]]) for r in rows), default=6)
    print(f"{'file':<22} {'arch':<6} {'kernel':<{width}} {'regs':>4} {'spill st':>8} {'spill ld':>8}")
    for file, kernel, arch, regs, st, ld in sorted(rows, key=lambda r: (r[0], names[r[1]], r[2])):
        flag = "  <-- SPILL" if st or ld else ""
        print(f"{file:<22} {arch:<6} {names[kernel]:<{width}} {regs:>4} {st:>8} {ld:>8}{flag}")
    print(f"\n{len(sources)} files x {len(archs)} archs, {len(rows)} kernels, "
          f"max {max((r[3] for r in rows), default=0)} registers, {len(spilling)} spilling, "
          f"{'compile errors' if failed else 'no compile errors'}")
    return 1 if failed or spilling else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`make gpu-check`: one prepared run on a GPU machine that builds sparse_rt against the torch
installed there, runs its CUDA tests, runs its kernels under compute-sanitizer and benchmarks them,
and leaves one results file (README: "GPU check").

Phases, in order, each under a time limit inside one overall budget (--budget, 450 s by default,
for a machine lent 8 minutes); a phase that fails or runs out of time is recorded as such, its log's
tail included, and the next phases still run where they can:
  build      python setup.py build_ext --inplace (MAX_JOBS=--jobs, SPARSE_RT_CUDA=1, only the GPU's
             own architecture unless --archs says otherwise), then a check that the ops load with
             CUDA kernels
  tests      pytest -m cuda: every CUDA-parametrised test (tests needing ../shared skip), with a
             per-test timeout where pytest-timeout is installed, in parallel where pytest-xdist is
  sanitizer  tools/kernel_smoke.py (every kernel family once, outputs checked), then the same under
             compute-sanitizer --tool memcheck and --tool racecheck, torch's caching allocator off
             so that memcheck sees each tensor's own bounds
  bench      benchmarks/bench_cuda.py (CUDA graphs, outputs checked before timing), its rows kept as
             they come so that a run cut short keeps what it measured
The results file, benchmarks/results/cuda-DATE.json (with --out DIR: DIR/cuda-DATE.json, and each
phase's log beside it; else the logs go to build/gpu-check/), is rewritten after every phase: the
device, driver, torch, CUDA and compiler versions, each phase's status, time and summary, and every
benchmark case with its median and output error. The table is printed last.

--dry-run does the same on the CPU of a machine without a GPU, so that the first GPU minute is not
spent on a typo: the build without CUDA (SPARSE_RT_CUDA=0), the CUDA test selection (collected,
then skipped), the kernel script on the CPU ops, no sanitizer, and the benchmark on the CPU at tiny
sizes without CUDA graphs; results go to build/gpu-check/cuda-dryrun-DATE.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHASES = ("build", "tests", "sanitizer", "bench")
# Seconds: a phase's own limit, and the least it is worth starting with. A phase gets its limit or
# what the budget leaves once the later phases' minimums are set aside, whichever is smaller.
LIMITS = {"build": 360, "tests": 150, "sanitizer": 150, "bench": 300}
MINIMUMS = {"build": 60, "tests": 30, "sanitizer": 30, "bench": 45}
# Bad arguments whose messages format numbers, one raised by torch itself and one by sparse_rt (see
# error_message_probe): code, and what the printed message must hold.
ERROR_PROBES = {
    "torch": ("import torch\n"
              "try:\n"
              "    torch.ones(2, 3) @ torch.ones(4, 5)\n"
              "except RuntimeError as e:\n"
              "    print(e)\n", "(2x3 and 4x5)"),
    "sparse_rt": ("import torch, sparse_rt\n"
                  "i = torch.tensor([0, 1], dtype=torch.int32)\n"
                  "try:\n"
                  "    torch.ops.sparse_rt.csr_linear(torch.ones(2, 4), i, i[:1], torch.ones(1), None, -1)\n"
                  "except RuntimeError as e:\n"
                  "    print(e)\n", "in_features must be >= 0, got -1"),
}
LOG_CAP = 8 << 20  # a log's bytes kept (its head and tail), under the device runner's 16 MiB per file


def load_module(name, path):
    """A script of the repository as a module (tools/ and benchmarks/ are no packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build_config = load_module("sparse_rt_build_config", REPO / "tools" / "build_config.py")


def command_output(cmd, timeout=30, env=None):
    """stdout of a short command, or None when it is missing or fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def cap_log(path):
    """Keeps a log under LOG_CAP bytes: its first and last halves with a marker between."""
    size = path.stat().st_size if path.exists() else 0
    if size <= LOG_CAP:
        return
    data = path.read_bytes()
    half = LOG_CAP // 2
    path.write_bytes(data[:half] + f"\n[... {size - LOG_CAP} bytes cut ...]\n".encode() + data[-half:])


class Check:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        date = dt.date.today().isoformat()
        name = f"cuda-dryrun-{date}.json" if args.dry_run else f"cuda-{date}.json"
        default_out = REPO / "build" / "gpu-check" if args.dry_run else REPO / "benchmarks" / "results"
        self.out = Path(args.out).resolve() / name if args.out else default_out / name
        self.logs = Path(args.out).resolve() if args.out else REPO / "build" / "gpu-check"
        for folder in (self.out.parent, self.logs, REPO / "build" / "gpu-check"):
            folder.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                               os.environ.get("PYTHONPATH")])),
                    "PYTHONUNBUFFERED": "1"}
        self.result = {"schema": "sparse_rt gpu-check 1", "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                       "dry_run": args.dry_run, "command": sys.argv, "budget_s": args.budget,
                       "status": "running", "phases": {}}
        self.device = "cpu" if args.dry_run else "cuda"

    # ------------------------------------------------------------------ bookkeeping

    def elapsed(self):
        return round(time.monotonic() - self.start, 1)

    def limit(self, phase):
        """Seconds this phase may run, or None when the budget cannot give it its minimum."""
        later = PHASES[PHASES.index(phase) + 1:]
        reserve = sum(MINIMUMS[p] for p in later if p in self.args.phases)
        left = self.deadline - time.monotonic() - reserve
        if left < MINIMUMS[phase]:
            return None
        return int(min(LIMITS[phase] * (4 if self.args.dry_run else 1), left))

    def write(self):
        self.result["seconds"] = self.elapsed()
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        os.replace(tmp, self.out)

    def say(self, text):
        print(f"[gpu-check {self.elapsed():6.1f} s] {text}", flush=True)

    def run(self, name, cmd, timeout, env=None):
        """Runs cmd with its output in LOGS/name.log; {returncode, seconds, log, timed_out}. The
        command runs in its own process group, which a timeout ends as a whole (compilers under
        ninja, python under compute-sanitizer)."""
        log = self.logs / f"{name}.log"
        self.say(f"{name}: {shlex.join(str(c) for c in cmd)} (limit {timeout} s)")
        t0 = time.monotonic()
        with open(log, "wb") as f:
            f.write(f"$ {shlex.join(str(c) for c in cmd)}\n".encode())
            f.flush()
            try:
                proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                        env=env or self.env, start_new_session=True)
            except OSError as e:
                f.write(f"cannot start: {e}\n".encode())
                return {"returncode": None, "seconds": 0.0, "log": str(log), "timed_out": False, "error": str(e)}
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(timeout=grace)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
                f.write(f"\n[gpu-check: stopped after {timeout} s]\n".encode())
        cap_log(log)
        return {"returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 1), "log": str(log),
                "timed_out": timed_out}

    # ------------------------------------------------------------------ phases

    def environment(self):
        import torch

        env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
               "torch": torch.__version__, "torch_cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env.update(device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                       memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                       l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1))
        smi = command_output(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                              "--format=csv,noheader"])
        env["nvidia_smi"] = smi
        env["driver"] = smi.split(",")[1].strip() if smi and smi.count(",") >= 1 else None
        nvcc = build_config.find_nvcc()
        env["nvcc"] = nvcc
        env["nvcc_version"] = ((command_output([nvcc, "--version"]) or "").splitlines() or [None])[-1] if nvcc else None
        env["compute_sanitizer"] = self.sanitizer_path()
        # The C++ toolchain against the libstdc++ this process loaded (see choose_compiler).
        config_lines = torch.__config__.show().splitlines()
        built_with = [line.strip(" -") for line in config_lines if "GCC" in line or "Clang" in line]
        cxx = build_config.host_compiler()
        env.update(torch_built_with=built_with[0] if built_with else None, cxx=cxx,
                   cxx_version=((command_output([cxx, "--version"]) or "").splitlines() or [None])[0],
                   cxx_libstdcxx=build_config.compiler_libstdcxx(cxx), libstdcxx_loaded=build_config.loaded_libstdcxx())
        env["ninja"] = shutil.which("ninja")
        env["pytest_timeout"] = importlib.util.find_spec("pytest_timeout") is not None
        env["pytest_xdist"] = importlib.util.find_spec("xdist") is not None
        env["git_commit"] = command_output(["git", "-C", str(REPO), "rev-parse", "HEAD"])
        changed = command_output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        env["git_changed_files"] = None if changed is None else len(changed.splitlines())
        self.result["environment"] = env
        if not self.args.dry_run and not env["cuda_available"]:
            self.say("CUDA is not available here: use --dry-run on a machine without a GPU")
        self.write()
        return env

    def sanitizer_path(self):
        found = shutil.which("compute-sanitizer")
        home = build_config.find_cuda_home()
        candidate = Path(home) / "bin" / "compute-sanitizer" if home else None
        return found or (str(candidate) if candidate and candidate.exists() else None)

    def choose_compiler(self):
        """CC and CXX for the build: the configured compiler unless its libstdc++ is newer than the one
        Python loads here (build_config.libstdcxx_mismatch), then another compiler of this machine that
        matches; where none does, the configured one with its own libstdc++ first on LD_LIBRARY_PATH for
        every later phase (a newer libstdc++ also runs what older compilers built)."""
        configured = build_config.host_compiler()
        candidates = [configured, "/usr/bin/g++", shutil.which("g++")]
        seen, tried = set(), {}
        for cxx in filter(None, candidates):
            real = os.path.realpath(shutil.which(cxx) or cxx)
            if real in seen or not os.access(real, os.X_OK):
                continue
            seen.add(real)
            problem = build_config.libstdcxx_mismatch(cxx)
            tried[cxx] = problem or "ok"
            if problem is None:
                gcc = os.path.join(os.path.dirname(cxx), os.path.basename(cxx).replace("g++", "gcc"))
                cc = gcc if "g++" in os.path.basename(cxx) and os.path.exists(gcc) else os.environ.get("CC")
                return {"CXX": cxx, "CC": cc, "tried": tried}
        library = build_config.compiler_libstdcxx(configured)
        if library:
            self.env["LD_LIBRARY_PATH"] = os.pathsep.join(
                filter(None, [os.path.dirname(library), self.env.get("LD_LIBRARY_PATH")]))
        return {"CXX": configured, "CC": os.environ.get("CC"), "tried": tried,
                "LD_LIBRARY_PATH": self.env.get("LD_LIBRARY_PATH")}

    def error_message_probe(self):
        """{probe: "ok" or what happened} for ERROR_PROBES, each in its own process. The GPU machine's
        first build crashed on every error message that formatted a number (2026-12-04); torch's own
        probe tells a broken environment from a broken build of ours."""
        answers = {}
        for name, (code, expected) in ERROR_PROBES.items():
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                  env=self.env, cwd=REPO)
            if done.returncode < 0:
                answers[name] = f"the process died of signal {-done.returncode} formatting the error message"
            elif expected not in done.stdout:
                answers[name] = f"unexpected answer: {(done.stdout + done.stderr).strip()[-400:]}"
            else:
                answers[name] = "ok"
        return answers

    def phase_build(self, timeout):
        compiler = self.choose_compiler()
        env = {**self.env, "MAX_JOBS": str(self.args.jobs),
               **{k: compiler[k] for k in ("CC", "CXX") if compiler.get(k)}}
        if self.args.dry_run:
            env["SPARSE_RT_CUDA"] = "0"
        else:
            env["SPARSE_RT_CUDA"] = "1"  # a build that cannot compile the CUDA kernels fails, loudly
            archs = self.args.archs or self.gpu_arch()
            if archs:
                env["SPARSE_RT_CUDA_ARCHS"] = archs
        run = self.run("build", [sys.executable, "setup.py", "build_ext", "--inplace"], timeout, env)
        result = {**run, "archs": env.get("SPARSE_RT_CUDA_ARCHS"), "jobs": self.args.jobs, "compiler": compiler}
        if run["returncode"] != 0:
            result.update(status="timeout" if run["timed_out"] else "failed", tail=tail(run["log"], 60))
            return result
        probe = ("import json, torch, sparse_rt; from sparse_rt.ops import _library as L; "
                 "print(json.dumps({'compiled': sparse_rt.ops.HAS_COMPILED_OPS, 'load_error': L.LOAD_ERROR, "
                 "'build_info': sparse_rt.ops.build_info() if sparse_rt.ops.HAS_COMPILED_OPS else None, "
                 "'cuda_kernels': {op: torch._C._dispatch_has_kernel_for_dispatch_key('sparse_rt::' + op, 'CUDA') "
                 "for op in ('csr_linear', 'bsr_linear', 'csr_conv2d')}}))")
        out = command_output([sys.executable, "-c", probe], timeout=120, env=self.env)
        if out is None:
            result.update(status="failed", reason="the built extension does not import")
            return result
        result["extension"] = json.loads(out.splitlines()[-1])
        missing = [op for op, has in result["extension"]["cuda_kernels"].items() if not has]
        if not result["extension"]["compiled"] or (missing and not self.args.dry_run):
            result.update(status="failed", reason=f"ops missing: compiled={result['extension']['compiled']}, "
                                                  f"no CUDA kernel for {missing}")
            return result
        result["error_messages"] = answers = self.error_message_probe()
        if answers["sparse_rt"] != "ok":
            result.update(status="failed", reason=f"an op's bad argument: {answers['sparse_rt']} (built with "
                                                  f"{compiler['CXX']}; torch's own error: {answers['torch']})")
        else:
            result["status"] = "ok"
        return result

    def gpu_arch(self):
        arch = self.result.get("environment", {}).get("capability")
        return f"{arch[0]}.{arch[1]}" if arch else None

    def phase_tests(self, timeout):
        # A test module that cannot be imported there (a package missing) must not stop the others.
        cmd = [sys.executable, "-m", "pytest", "tests", "-m", "cuda", "-q", "-rfE", "-p", "no:cacheprovider",
               "--continue-on-collection-errors"]
        env = self.result.get("environment", {})
        if env.get("pytest_timeout"):
            cmd += ["--timeout", str(self.args.test_timeout)]
        if env.get("pytest_xdist") and not self.args.dry_run:
            cmd += ["-n", str(min(8, max(1, self.args.jobs // 2)))]
        run = self.run("tests", cmd, timeout)
        text = Path(run["log"]).read_text(errors="replace")
        counts = {}
        summary_lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
        for count, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)",
                                      summary_lines[-1] if summary_lines else ""):
            counts[what.rstrip("s") if what.startswith("error") else what] = int(count)
        failures = [line for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        ran = sum(counts.values()) - counts.get("deselected", 0)
        status = ("timeout" if run["timed_out"] else "ok" if run["returncode"] == 0 and ran else "failed")
        result = {**run, "status": status, "counts": counts, "failures": failures[:50],
                  "per_test_timeout_s": self.args.test_timeout if env.get("pytest_timeout") else None}
        if status != "ok":
            result["tail"] = tail(run["log"], 40)
        return result

    def phase_sanitizer(self, timeout):
        smoke_json = self.work / "smoke.json"
        smoke_cmd = [sys.executable, "tools/kernel_smoke.py", "--device", self.device]
        t0 = time.monotonic()
        plain = self.run("smoke", [*smoke_cmd, "--json", smoke_json], min(timeout, 90))
        result = {"smoke": self.smoke_result(plain, smoke_json)}
        if self.args.dry_run:
            result["memcheck"] = result["racecheck"] = {"status": "skipped", "reason": "dry run: no GPU"}
        elif not self.result["environment"].get("compute_sanitizer"):
            result["memcheck"] = result["racecheck"] = {"status": "unavailable",
                                                        "reason": "compute-sanitizer not found"}
        else:
            # Every tensor its own cudaMalloc: inside one cached segment memcheck sees no bounds.
            env = {**self.env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
            tools = {"memcheck": ["--tool", "memcheck", "--leak-check", "no"],
                     "racecheck": ["--tool", "racecheck", "--racecheck-report", "all"]}
            for i, (tool, flags) in enumerate(tools.items()):
                left = timeout - (time.monotonic() - t0)
                share = int(left / (len(tools) - i))
                if share < 10:
                    result[tool] = {"status": "skipped", "reason": "time budget"}
                    continue
                tool_json = self.work / f"{tool}.json"
                cmd = [self.result["environment"]["compute_sanitizer"], *flags, "--error-exitcode", "99",
                       "--print-limit", "30", *smoke_cmd, "--json", tool_json]
                result[tool] = self.sanitizer_result(self.run(tool, cmd, share, env), tool_json)
        statuses = [r["status"] for r in result.values()]
        result["status"] = ("ok" if all(s in ("ok", "skipped") for s in statuses) else
                            "unavailable" if set(statuses) <= {"ok", "skipped", "unavailable"} else "failed")
        return result

    def smoke_result(self, run, json_path):
        result = dict(run)
        try:
            data = json.loads(json_path.read_text())
            result.update(cases=data["cases"], failed=data["failed"],
                          failures=[r for r in data["results"] if not r["ok"]][:30])
        except (OSError, ValueError, KeyError):
            data = None
        if run["timed_out"]:
            result["status"] = "timeout"
        elif run["returncode"] == 0 and data:
            result["status"] = "ok"
        else:
            result.update(status="failed", tail=tail(run["log"], 30))
        json_path.unlink(missing_ok=True)
        return result

    def sanitizer_result(self, run, json_path):
        result = self.smoke_result(run, json_path)
        text = Path(run["log"]).read_text(errors="replace")
        summary = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: .*", text)
        result["summary"] = summary[-1] if summary else None
        errors = re.search(r"ERROR SUMMARY: (\d+) error", text)
        hazards = re.search(r"RACECHECK SUMMARY: (\d+) hazard", text)
        result["errors"] = int(errors.group(1)) if errors else int(hazards.group(1)) if hazards else None
        if re.search(r"Device not supported|Unable to find injection|Target application terminated before first "
                     r"instrumented API call|LibraryNotLoaded", text):
            result.update(status="unavailable", tail=tail(run["log"], 20))
        elif result["errors"]:
            result.update(status="errors", tail=tail(run["log"], 60))
        return result

    def phase_bench(self, timeout):
        rows_file = self.work / "bench.jsonl"
        rows_file.unlink(missing_ok=True)
        margin = max(20, int(0.15 * timeout))
        cmd = [sys.executable, "benchmarks/bench_cuda.py", "--device", self.device, "--jsonl", rows_file,
               "--budget-s", str(max(1, timeout - margin))]
        if self.args.dry_run:
            cmd += ["--tiny", "--dtype", "fp32", "--samples", "3", "--warmup", "1", "--reps", "2", "--e2e-reps", "1"]
        cmd += shlex.split(self.args.bench_args)
        run = self.run("bench", cmd, timeout)
        records = []
        if rows_file.exists():
            for line in rows_file.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:  # the last line of a run killed mid-write
                    pass
        rows = [r for r in records if "suite" in r]
        notes = [r["note"] for r in records if "note" in r]
        result = {**run, "cases": len(rows), "notes": notes[:50]}
        if rows:
            bench = load_module("bench_cuda", REPO / "benchmarks" / "bench_cuda.py")
            summary = bench.summarize(rows, self.device)
            self.result["bench"] = {"summary": summary, "notes": notes, "results": rows}
            self.table = bench.table(rows, summary)
            wrong = bench.failed(summary, notes)
        else:
            self.result["bench"] = {"summary": {}, "notes": notes, "results": []}
            wrong = True
        result["status"] = "timeout" if run["timed_out"] else "failed" if wrong or run["returncode"] else "ok"
        if result["status"] != "ok":
            result["tail"] = tail(run["log"], 40)
        return result

    # ------------------------------------------------------------------ the run

    def main(self):
        # Scratch files that do not come back (the benchmark's rows as they come), one folder per run.
        self.work = Path(tempfile.mkdtemp(prefix="work-", dir=REPO / "build" / "gpu-check"))
        try:
            return self.run_phases()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def run_phases(self):
        self.table = []
        self.environment()
        built = True
        for phase in PHASES:
            if phase not in self.args.phases:
                continue
            if not built and phase != "build":
                self.result["phases"][phase] = {"status": "skipped", "reason": "the build failed"}
                continue
            timeout = self.limit(phase)
            if timeout is None:
                self.result["phases"][phase] = {"status": "skipped", "reason": "time budget"}
                self.say(f"{phase}: skipped, the budget is spent")
                continue
            try:
                result = getattr(self, f"phase_{phase}")(timeout)
            except Exception as e:  # the results file records it and the other phases still run
                result = {"status": "failed", "reason": f"gpu_check.py: {type(e).__name__}: {e}"}
            self.result["phases"][phase] = result
            built = built and (phase != "build" or result["status"] == "ok")
            self.say(f"{phase}: {result['status']}" + (f" ({result.get('seconds')} s)" if "seconds" in result else ""))
            self.write()
        statuses = {p: r["status"] for p, r in self.result["phases"].items()}
        # failed: something is wrong; incomplete: something could not run (time, build, no sanitizer).
        self.result["status"] = ("ok" if all(s == "ok" for s in statuses.values()) else
                                 "incomplete" if all(s in ("ok", "skipped", "unavailable") for s in statuses.values())
                                 else "failed")
        self.write()
        self.report(statuses)
        return 0 if self.result["status"] == "ok" else 1

    def report(self, statuses):
        """The benchmark table, then each phase's verdict (the device runner returns the output's end)."""
        print("\n".join(self.table))
        print()
        env = self.result["environment"]
        print(f"gpu-check{' (dry run)' if self.args.dry_run else ''}: {env.get('device', 'no GPU')}, "
              f"driver {env.get('driver')}, torch {env['torch']} (CUDA {env['torch_cuda']}), "
              f"commit {(env.get('git_commit') or '?')[:10]}, {self.elapsed()} s")
        for phase, result in self.result["phases"].items():
            detail = ""
            if phase == "tests" and "counts" in result:
                detail = ", ".join(f"{n} {k}" for k, n in result["counts"].items())
            elif phase == "sanitizer":
                detail = "; ".join(f"{tool} {r['status']}" + (f" ({r['summary']})" if r.get("summary") else "")
                                   + (f" {r['failed']}/{r['cases']} wrong" if r.get("failed") else "")
                                   for tool, r in result.items() if isinstance(r, dict))
            elif phase == "bench":
                detail = f"{result.get('cases', 0)} cases"
            elif phase == "build":
                detail = result.get("reason", "") or (f"archs {result['archs']}" if result.get("archs")
                                                      else "without CUDA (dry run)" if self.args.dry_run else "")
            print(f"  {phase:10} {statuses[phase]:12} {detail}")
            for line in result.get("failures", [])[:15] if phase == "tests" else []:
                print(f"    {line[:160]}")
            if result.get("tail") and statuses[phase] not in ("ok",):
                print("    " + "\n    ".join(result["tail"].splitlines()[-12:]))
        print(f"results: {self.out}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="on the CPU, without a GPU (see below)")
    p.add_argument("--out", help="folder for the results file and the logs (e.g. the device runner's $OUT)")
    p.add_argument("--budget", type=float, help="seconds for all phases (default 450; dry run 3600)")
    p.add_argument("--phases", type=lambda t: [s.strip() for s in t.split(",") if s.strip()], default=list(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--jobs", type=int, help="parallel compile jobs (default: the CPU count; dry run 2)")
    p.add_argument("--archs", help="SPARSE_RT_CUDA_ARCHS of the build (default: the GPU's own, e.g. 9.0)")
    p.add_argument("--test-timeout", type=int, default=60, help="seconds per test (with pytest-timeout)")
    p.add_argument("--bench-args", default="", help="more arguments for benchmarks/bench_cuda.py")
    args = p.parse_args(argv)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    args.budget = args.budget or (3600.0 if args.dry_run else 450.0)
    args.jobs = args.jobs or (min(2, os.cpu_count() or 1) if args.dry_run else os.cpu_count() or 1)
    return args


def main(argv=None):
    return Check(parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())

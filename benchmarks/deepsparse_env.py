"""DeepSparse in a virtual environment of its own, for benchmarks/bench_engines.py.

    python benchmarks/deepsparse_env.py        # create build/deepsparse-venv, or say why it cannot
    make deepsparse-env                        # the same

DeepSparse (Neural Magic's sparse CPU engine) is end of life: 1.9.0 on PyPI is a stub whose setup
exits 1. 1.8.0 has wheels for CPython 3.8-3.11 on Linux and needs numpy < 2 and an older onnx
than sparse_rt uses, so it gets a virtual environment of its own with pinned versions (PINS).
It runs a dense ONNX file whose pruned weights are zeros (it finds the sparsity itself) of IR
version <= 9, exported at opset 14: at opset 17 LayerNormalization is one op it does not run
natively (BERT-base 3.3x slower). export_onnx writes such a file; DeepSparseWorker runs
deepsparse_worker.py inside the venv and asks it to compile, check and time blocks of calls.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "build" / "deepsparse-venv"
PINS = ("deepsparse==1.8.0", "numpy==1.26.4", "onnx==1.14.1")
OPSET = 14
MAX_IR_VERSION = 9
WORKER = Path(__file__).resolve().parent / "deepsparse_worker.py"
_PYTHONS = ((3, 11), (3, 10), (3, 9), (3, 8))  # the CPython versions deepsparse 1.8.0 has wheels for


class DeepSparseUnavailable(RuntimeError):
    """DeepSparse cannot run here; the message says why."""


def _stamp(venv):
    return venv / "sparse_rt-pins.json"


def _venv_python(venv):
    return venv / "bin" / "python"


def _interpreter():
    """A CPython that deepsparse 1.8.0 has wheels for: this one, or python3.X on PATH."""
    if sys.version_info[:2] in _PYTHONS:
        return sys.executable
    for major, minor in _PYTHONS:
        found = shutil.which(f"python{major}.{minor}")
        if found:
            return found
    raise DeepSparseUnavailable(f"deepsparse 1.8.0 has wheels for CPython 3.8-3.11 only; this is "
                                f"{platform.python_version()} and no python3.8-3.11 is on PATH")


def _run(command, what):
    done = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        # pip names the failing requirement last; its warnings about unreachable indexes are noise
        lines = [line for line in (done.stderr + done.stdout).splitlines()
                 if line.strip() and not line.startswith("WARNING: Location")]
        raise DeepSparseUnavailable(f"{what} failed (exit {done.returncode}): " + " | ".join(lines[-4:]))
    return done


def child_env():
    """The environment of the venv's processes: none of this process's import paths (they could
    bring a numpy 2), and DeepSparse's and SparseZoo's usage analytics off (they phone home)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", NM_DISABLE_ANALYTICS="1")
    return env


def ensure_venv(venv=VENV, *, create=True, echo=print):
    """The venv's python (a Path), creating the venv with PINS when it is missing or was made
    with other pins. Raises DeepSparseUnavailable with the reason when it cannot: not Linux
    x86-64/aarch64, no CPython 3.8-3.11, pip failing (no network, no wheel), or `create` False."""
    venv = Path(venv)
    python = _venv_python(venv)
    if python.exists() and _stamp(venv).exists() and json.loads(_stamp(venv).read_text()) == list(PINS):
        return python
    if not create:
        raise DeepSparseUnavailable(f"no DeepSparse environment at {venv}: run `make deepsparse-env`")
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        raise DeepSparseUnavailable(f"deepsparse 1.8.0 has wheels for Linux x86-64 and aarch64 only, "
                                    f"not {sys.platform} {platform.machine()}")
    interpreter = _interpreter()
    echo(f"creating {venv} ({', '.join(PINS)}) with {interpreter}")
    _run([interpreter, "-m", "venv", "--clear", str(venv)], "python -m venv")
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
         f"pip install {' '.join(PINS)}")
    _run([str(python), "-c", "import deepsparse"], "import deepsparse")
    _stamp(venv).write_text(json.dumps(list(PINS)) + "\n")
    return python


def export_onnx(module, example, path):
    """Writes `module` (a dense nn.Module, pruned weights zero) to `path` as DeepSparse takes it:
    torch.onnx.export's TorchScript exporter (dynamo=False: the dynamo exporter starts at opset 18)
    at opset 14, batch dimension dynamic (compile_model fixes it), IR version at most 9.
    Raises DeepSparseUnavailable when the exporter fails."""
    import onnx
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warnings
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as e:  # the exporter raises many types; any of them means no DeepSparse run
        raise DeepSparseUnavailable(f"torch.onnx.export at opset {OPSET} (dynamo=False) failed: "
                                    f"{type(e).__name__}: {str(e)[:300]}") from None
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
        onnx.save(proto, str(path))
    return path


class DeepSparseWorker:
    """deepsparse_worker.py running in the venv, asked over its stdin/stdout (JSON lines); its
    stderr (DeepSparse's banner and logs) goes to `log`. Use as a context manager."""

    def __init__(self, python, log):
        self.log = Path(log)
        self._log_file = open(self.log, "w")
        self.process = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log_file, text=True, env=child_env())
        try:
            self.versions = self._request(None)["versions"]
        except BaseException:
            self.close()
            raise

    def _request(self, message):
        if message is not None:
            try:
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass  # the worker is gone: readline says so below
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            tail = " | ".join(self.log.read_text().strip().splitlines()[-4:])
            raise DeepSparseUnavailable(f"the DeepSparse worker exited (code {code}): {tail}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise DeepSparseUnavailable(answer["error"])
        return answer

    def compile(self, path, batch, threads, input_npy, expected_npy):
        """Compiles the ONNX file at `path` for `batch` on `threads` cores and runs it on the
        array in `input_npy`: the worker's answer, {"max_rel_diff" (to `expected_npy`), "compile_s",
        "fraction_of_supported_ops"}."""
        return self._request({"op": "compile", "path": str(path), "batch": batch, "threads": threads,
                              "input": str(input_npy), "expected": str(expected_npy)})

    def block(self, untimed, timed, settle=0.0):
        """A block of calls of the compiled model (sparse_rt.timing.compare_latency_blocks' protocol)."""
        return self._request({"op": "block", "untimed": untimed, "timed": timed, "settle": settle})["samples"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main():
    try:
        python = ensure_venv()
    except DeepSparseUnavailable as e:
        print(f"DeepSparse skipped: {e}", file=sys.stderr)
        return 1
    with DeepSparseWorker(python, VENV / "worker.log") as worker:
        print(f"{VENV}: {', '.join(f'{k} {v}' for k, v in worker.versions.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

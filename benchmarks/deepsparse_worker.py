"""DeepSparse's side of benchmarks/bench_engines.py: runs INSIDE build/deepsparse-venv (DeepSparse's
own environment, see deepsparse_env.py; it imports neither torch nor sparse_rt) as a server that
compiles an ONNX file with deepsparse, checks its output against a reference, and times blocks of
calls when asked, so that its blocks take turns with the engines of the parent process.

Requests are JSON lines on stdin; answers are JSON lines on the original stdout (the process's
stdout itself is pointed at stderr, where DeepSparse's banner and logs go). On start it answers
{"ok": true, "versions": {...}}, then per request:

  {"op": "compile", "path": P, "batch": B, "threads": T, "input": "x.npy", "expected": "y.npy"}
      -> {"ok": true, "compile_s": S, "max_rel_diff": max|out - expected| / max|expected|,
          "fraction_of_supported_ops": F}   (the share of the graph DeepSparse runs natively)
  {"op": "block", "untimed": U, "timed": N, "settle": S}
      -> {"ok": true, "samples": [N per-call seconds]}   (first U untimed calls, and more until
                                                          S seconds have passed)
  {"op": "quit"}
A request that fails answers {"ok": false, "error": "..."} and the server goes on.
"""

import json
import os
import sys
import time


def _block(engine, inputs, untimed, timed, settle):
    # The protocol of sparse_rt.timing.call_block (not importable here: no torch in this venv).
    deadline = time.perf_counter() + settle
    calls = 0
    while calls < untimed or time.perf_counter() < deadline:
        engine.run(inputs)
        calls += 1
    samples = []
    for _ in range(timed):
        t0 = time.perf_counter()
        engine.run(inputs)
        samples.append(time.perf_counter() - t0)
    return samples


def main():
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # DeepSparse's C++ prints go to fd 1: send them to stderr, away from the answers
    sys.stdout = sys.stderr

    def answer(message):
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    try:
        import deepsparse
        import numpy
        import onnx
    except Exception as e:  # noqa: BLE001  (any import failure means no DeepSparse here)
        answer({"ok": False, "error": f"import failed: {type(e).__name__}: {e}"})
        return 1
    answer({"ok": True, "versions": {"deepsparse": deepsparse.__version__, "numpy": numpy.__version__,
                                     "onnx": onnx.__version__, "python": sys.version.split()[0]}})
    engine = inputs = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                break
            if op == "compile":
                engine = inputs = None  # the previous engine's memory goes before the next compiles
                t0 = time.perf_counter()
                engine = deepsparse.compile_model(request["path"], batch_size=request["batch"],
                                                  num_cores=request["threads"])
                compile_s = time.perf_counter() - t0
                inputs = [numpy.load(request["input"])]
                expected = numpy.load(request["expected"])
                got = engine.run(inputs)[0]
                if got.shape != expected.shape:
                    raise ValueError(f"output shape {got.shape}, expected {expected.shape}")
                diff = float(numpy.abs(got.astype(numpy.float64) - expected).max())
                scale = float(numpy.abs(expected).max())
                answer({"ok": True, "compile_s": compile_s, "max_rel_diff": diff / scale if scale else diff,
                        "fraction_of_supported_ops": engine.fraction_of_supported_ops})
            elif op == "block":
                if engine is None:
                    raise RuntimeError("block before a successful compile")
                answer({"ok": True, "samples": _block(engine, inputs, request["untimed"], request["timed"],
                                                                request["settle"])})
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001  (reported to the parent, which records it)
            answer({"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

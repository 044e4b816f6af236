"""`make gpu-check` without a GPU: its pieces on the CPU ops (the dry run's paths), the bookkeeping
that must survive a failing build, and the benchmark summary that a GPU run reports."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import compiler_with_libstdcxx

REPO = Path(__file__).resolve().parents[1]


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load("gpu_check", "tools/gpu_check.py")
kernel_smoke = load("kernel_smoke", "tools/kernel_smoke.py")
bench_cuda = load("bench_cuda", "benchmarks/bench_cuda.py")


def test_kernel_smoke_checks_every_family_on_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    assert kernel_smoke.main(["--device", "cpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["failed"] == 0 and data["cases"] == len(data["results"]) > 50
    names = {(r["family"], r["name"]) for r in data["results"]}
    assert {family for family, _ in names} == {"csr_linear", "bsr_linear", "csr_conv2d", "validate_indices"}
    assert any("col[1:] view" in name for _, name in names)  # the scalar-load path
    assert {"float32", "float16", "bfloat16"} <= {r["dtype"] for r in data["results"] if r["family"] == "bsr_linear"}


def test_kernel_smoke_reports_a_wrong_kernel(monkeypatch, capsys):
    """A kernel that returns a wrong output fails the script (exit 1), naming the case."""
    import torch

    real = torch.ops.sparse_rt.csr_conv2d

    class Ops:
        csr_linear, bsr_linear = torch.ops.sparse_rt.csr_linear, torch.ops.sparse_rt.bsr_linear

        @staticmethod
        def csr_conv2d(*args):
            return real(*args) * 1.01

    monkeypatch.setattr(kernel_smoke.torch.ops, "sparse_rt", Ops)
    assert kernel_smoke.main(["--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL csr_conv2d" in out and "relative error" in out and "FAIL csr_linear" not in out


def test_bench_tiny_on_cpu(tmp_path):
    """The benchmark's every suite at tiny sizes: outputs checked, timed, summarized."""
    out = tmp_path / "bench.json"
    rows_file = tmp_path / "rows.jsonl"
    code = bench_cuda.main(["--device", "cpu", "--tiny", "--dtype", "fp32", "--models", "bert_encoder",
                            "--batches", "1,8", "--conv-batches", "1", "--samples", "1", "--warmup", "0",
                            "--reps", "1", "--e2e-reps", "1", "--out", str(out), "--jsonl", str(rows_file)])
    assert code == 0
    result = json.loads(out.read_text())
    rows = result["results"]
    assert {r["suite"] for r in rows} == {"linear", "conv", "e2e", "dlmc", "bsr"}
    assert [json.loads(line) for line in rows_file.read_text().splitlines()] == rows
    for r in rows:
        ours = r["engines"]["sparse_rt"]
        assert ours["ms"] > 0 and ours["err"] <= bench_cuda.TOLERANCE[getattr(bench_cuda.torch, r["dtype"])]
        assert "dense" in r["speedup"]
    assert all(r["engines"]["triton_bsr"] == {"skipped": "Triton BSR runs on CUDA only"}
               for r in rows if r["suite"] == "bsr")
    assert {r["plan"] for r in rows if r["suite"] == "e2e"} == {"auto", "csr"}
    summary = result["summary"]
    assert not any(summary[s]["problems"] for s in ("linear", "conv", "e2e", "dlmc", "bsr"))
    table = bench_cuda.cost_table("cpu")  # the row this CPU's layers are planned with
    assert set(summary["calibration"]) >= {f"{table}:gemv", f"{table}:gemm", f"{table}:conv1x1"}
    assert summary["targets"] == []  # the targets are GPU targets


def test_a_forced_csr_kernel_is_set_only_while_its_call_runs(monkeypatch):
    variable = bench_cuda.sparse_rt.ops.CSR_CUDA_KERNEL_VARIABLE
    seen = []
    call = bench_cuda.forced_kernel("tensor_cores", lambda i: seen.append((i, os.environ[variable])))
    monkeypatch.setenv(variable, "subwarp")
    call(3)
    assert seen == [(3, "tensor_cores")] and os.environ[variable] == "subwarp"
    monkeypatch.delenv(variable)
    call(4)
    assert seen[-1] == (4, "tensor_cores") and variable not in os.environ


def _row(suite, case, batch, ms, dense_ms, **info):
    row = {"suite": suite, "case": case, "batch": batch, "dtype": "float16", "copies": 1,
           "engines": {"sparse_rt": {"ms": ms, "err": 1e-4}, "dense": {"ms": dense_ms, "err": 1e-4}}, **info}
    return bench_cuda.finish_row(row)


def test_summary_calibrates_the_cuda_planner_and_checks_the_targets():
    planner = lambda regime, picks: {"device": "cuda", "regime": regime, "predicted": 2.0 if picks else 0.5,
                                     "picks_sparse": picks}
    rows = [_row("linear", "768x768 90% random", 1, 1.0, 2.0, shape=[768, 768], sparsity=0.9, density=0.1,
                 format="csr", planner=planner("gemv", True)),
            _row("linear", "768x768 90% random", 64, 2.0, 1.6, shape=[768, 768], sparsity=0.9, density=0.1,
                 format="csr", planner=planner("gemm", True)),
            _row("linear", "768x768 70% random", 1, 1.0, 1.5, shape=[768, 768], sparsity=0.7, density=0.3,
                 format="csr", planner=planner("gemv", False))]
    rows[0]["engines"]["torch_sparse"] = {"wrong": 0.5, "tolerance": 5e-3}
    summary = bench_cuda.summarize(rows, "cuda")
    assert summary["linear"]["problems"] == {}
    assert summary["linear"]["baseline_failures"] == {"torch_sparse wrong": ["768x768 90% random N=1: 0.5"]}
    calibration = summary["calibration"]
    gemv = sorted([2.0 * 0.1, 1.5 * 0.3])  # speedup x density of the two batch-1 rows
    assert calibration["cuda:gemv"]["measured"] == pytest.approx(gemv[0] + (gemv[1] - gemv[0]) * 0.1)  # 10th pct
    assert calibration["cuda:gemv"]["geomean"] == pytest.approx((gemv[0] * gemv[1]) ** 0.5)
    assert calibration["cuda:gemm"] == {"measured": pytest.approx(0.08), "geomean": pytest.approx(0.08), "cases": 1,
                                        "table": bench_cuda.SPARSE_EFFICIENCY["cuda"]["gemm"]}
    targets = {t["target"]: t for t in summary["targets"]}
    bert = targets["CSR >= 1.5x cuBLAS at 90%, N <= 64, BERT-base shapes"]
    assert (bert["measured"], bert["cases"], bert["met"]) == (pytest.approx(0.8), 2, False)
    assert targets["CSR >= 1.2x cuBLAS at 70%, N = 1"]["met"] is True
    assert targets["BSR 32x32 at 90% >= 3x cuBLAS at N >= 256"]["met"] is None  # no data
    never = targets["never below 1x dense where the planner picks sparse"]
    assert (never["measured"], never["met"], never["losses"]) == (1, False, ["768x768 90% random N=64"])
    rows[1]["engines"]["sparse_rt"] = {"error": "RuntimeError: boom"}
    assert bench_cuda.failed(bench_cuda.summarize([bench_cuda.finish_row(rows[1])], "cuda"), [])


def _check(tmp_path, *argv):
    return gpu_check.Check(gpu_check.parse_args(["--dry-run", "--out", str(tmp_path), *argv]))


def test_a_failing_build_leaves_a_results_file_with_the_compiler_tail(tmp_path, monkeypatch, capsys):
    check = _check(tmp_path, "--phases", "build,tests,sanitizer")

    def failing_build(name, cmd, timeout, env=None):
        assert name == "build" and cmd[1:] == ["setup.py", "build_ext", "--inplace"] and env["SPARSE_RT_CUDA"] == "0"
        log = tmp_path / "build.log"
        log.write_text("[1/9] c++ ...\ncsrc/torch/checks.cpp:12:5: error: expected ';' before 'return'\n"
                       "ninja: build stopped: subcommand failed.\n")
        return {"returncode": 1, "seconds": 3.0, "log": str(log), "timed_out": False}

    monkeypatch.setattr(check, "run", failing_build)
    assert check.main() == 1
    result = json.loads(next(tmp_path.glob("cuda-dryrun-*.json")).read_text())
    assert result["status"] == "failed" and result["environment"]["torch"]
    build = result["phases"]["build"]
    assert build["status"] == "failed" and "error: expected ';'" in build["tail"]
    assert result["phases"]["tests"] == result["phases"]["sanitizer"] == {"status": "skipped",
                                                                          "reason": "the build failed"}
    assert "error: expected ';'" in capsys.readouterr().out


def test_a_phase_past_its_limit_is_stopped_and_recorded(tmp_path):
    check = _check(tmp_path)
    run = check.run("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2)
    assert run["timed_out"] and run["seconds"] < 30
    assert "started" in Path(run["log"]).read_text() and "stopped after 2 s" in Path(run["log"]).read_text()


def test_budget_sets_aside_the_later_phases_minimums(tmp_path):
    check = _check(tmp_path, "--budget", "200")
    minimums = gpu_check.MINIMUMS
    assert check.limit("build") == pytest.approx(200 - minimums["tests"] - minimums["sanitizer"] - minimums["bench"],
                                                 abs=2)
    check.deadline -= 190
    assert check.limit("build") is None and check.limit("bench") is None


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """`make gpu-check DRY_RUN=1` less the build (minutes on 2 cores): the CUDA tests collected and
    skipped, the kernel script, and the benchmark at tiny sizes, in one results file."""
    check = _check(tmp_path, "--phases", "tests,sanitizer,bench", "--bench-args",
                   "--suites linear,bsr,e2e --models bert_encoder --samples 1 --warmup 0")
    assert check.main() == 0
    result = json.loads(next(tmp_path.glob("cuda-dryrun-*.json")).read_text())
    phases = result["phases"]
    assert result["status"] == "ok" and set(phases) == {"tests", "sanitizer", "bench"}
    assert phases["tests"]["counts"]["skipped"] > 300 and "passed" not in phases["tests"]["counts"]
    assert phases["sanitizer"]["smoke"]["failed"] == 0
    assert phases["sanitizer"]["memcheck"] == {"status": "skipped", "reason": "dry run: no GPU"}
    assert phases["bench"]["cases"] == len(result["bench"]["results"]) > 10
    for name in ("tests.log", "smoke.log", "bench.log"):
        assert (tmp_path / name).stat().st_size > 0


def test_the_build_moves_off_a_compiler_newer_than_the_loaded_libstdcxx(tmp_path, monkeypatch):
    """The GPU machine's CXX compiled against a libstdc++ newer than the one Python loads there, and
    error messages with numbers crashed the process (2026-12-04): the build takes another compiler."""
    import shutil

    import torch  # noqa: F401
    if shutil.which("g++") is None or gpu_check.build_config.libstdcxx_mismatch("g++"):
        pytest.skip("needs a g++ that matches the libstdc++ loaded here")
    newer, _ = compiler_with_libstdcxx(tmp_path / "gcc-new", 999)
    monkeypatch.setenv("CXX", newer)
    chosen = _check(tmp_path).choose_compiler()
    assert chosen["CXX"] != newer and chosen["tried"][newer] != "ok" and chosen["tried"][chosen["CXX"]] == "ok"
    assert "LD_LIBRARY_PATH" not in chosen


def test_the_build_fails_when_an_error_message_crashes_the_process(tmp_path, monkeypatch):
    check = _check(tmp_path)
    assert check.error_message_probe() == {"torch": "ok", "sparse_rt": "ok"}  # RuntimeErrors naming the values
    crash = ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "")
    monkeypatch.setitem(gpu_check.ERROR_PROBES, "sparse_rt", crash)
    answers = check.error_message_probe()
    assert answers["torch"] == "ok" and "died of signal 11" in answers["sparse_rt"]
    monkeypatch.setattr(check, "run", lambda *a, **k: {"returncode": 0, "seconds": 1.0, "log": "", "timed_out": False})
    build = check.phase_build(60)
    assert build["status"] == "failed" and "died of signal 11" in build["reason"] and "torch's own error: ok" in build[
        "reason"]

"""`sparse-rt convert` and `sparse-rt inspect`, through sparse_rt.cli.main, and the ShrinkBench-style
numbers inspect prints."""

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt import models
from sparse_rt.cli import main
from sparse_rt.metrics import model_metrics, state_dict_metrics


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """A magnitude-pruned cifar_resnet-20 saved as FreeTickets does, under DataParallel."""
    torch.manual_seed(0)
    dense = sparse_rt.magnitude_prune(models.create("cifar_resnet", depth=20).eval(), 0.9, exclude=("conv",))
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"epoch": 160, "state_dict": {"module." + k: v for k, v in dense.state_dict().items()}}, path)
    return dense, path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_then_inspect(tmp_path, capsys, resnet20):
    dense, ckpt = resnet20
    out_path = tmp_path / "r20.srt"
    code, out, err = _run(capsys, "convert", ckpt, "--arch", "cifar_resnet", "--arch-kwargs", "depth=20",
                          "--format", "csr", "-o", out_path)
    assert code == 0, err
    assert "[dense_zeros]" in out and "stripped 'module.'" in out
    assert "blocks.8.conv2" in out and "compression ratio" in out and "theoretical speedup" in out
    assert f"wrote {out_path}" in out
    model = sparse_rt.load(out_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert ((model(x) - dense(x)).norm() / dense(x).norm()).item() <= 1e-5

    code, inspected, err = _run(capsys, "inspect", out_path)
    assert code == 0, err
    assert "arch cifar_resnet(depth=20)" in inspected
    totals = inspected.strip().splitlines()[-1]
    assert totals == out.strip().splitlines()[-2]  # the same totals as convert printed
    metrics = model_metrics(model, (3, 32, 32))
    assert f"theoretical speedup {metrics.theoretical_speedup:.2f}x" in totals
    assert f"parameters {metrics.params:,}" in totals


def test_convert_fuse_writes_a_fused_model(tmp_path, capsys, resnet20):
    dense, ckpt = resnet20
    out_path = tmp_path / "fused.srt"
    code, out, err = _run(capsys, "convert", ckpt, "--arch", "cifar_resnet", "--arch-kwargs", "depth=20",
                          "--format", "csr", "--fuse", "-o", out_path)
    assert code == 0, err
    # 19 BatchNorms after convolutions plus 2 in the downsampling shortcuts; the stem conv stays dense
    # (pruning excluded it), so its ReLU is not fused
    assert "fused: 21 BatchNorm(s) folded into convolutions, 9 residual sum(s) and 18 ReLU(s)" in out
    model = sparse_rt.load(out_path)
    assert model.fusion is not None and len(model.fusion.fused_relus) > 0
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert ((model(x) - dense(x)).norm() / dense(x).norm()).item() <= 1e-5


def test_convert_store_weights_writes_16_bit_values(tmp_path, capsys, resnet20):
    dense, ckpt = resnet20
    paths = {name: tmp_path / f"{name}.srt" for name in ("fp32", "bf16")}
    for name, path in paths.items():
        extra = ["--store-weights", name] if name != "fp32" else []
        code, out, err = _run(capsys, "convert", ckpt, "--arch", "cifar_resnet", "--arch-kwargs", "depth=20",
                              "--format", "csr", "--fuse", *extra, "-o", path)
        assert code == 0, err
    assert "sparse weights stored in bf16" in out
    assert paths["bf16"].stat().st_size < 0.85 * paths["fp32"].stat().st_size
    model = sparse_rt.load(paths["bf16"])
    layers = [m for m in model.modules() if isinstance(m, sparse_rt.nn.SparseConv2d)]
    assert layers and all(m.values.dtype == torch.bfloat16 and m.bias.dtype == torch.float32 for m in layers)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        y = model(x)
        assert y.dtype == torch.float32
        assert 0 < ((y - dense(x)).norm() / dense(x).norm()).item() <= 1e-2
    code, _, err = _run(capsys, "convert", "--ensemble", tmp_path, "--arch", "cifar_resnet", "--store-weights", "bf16",
                        "-o", tmp_path / "e.srt")
    assert code != 0 and "--store-weights apply to single models" in err


def test_inspect_checkpoint(capsys, resnet20):
    _, ckpt = resnet20
    code, out, err = _run(capsys, "inspect", ckpt)
    assert code == 0, err
    assert "[dense_zeros]" in out and "blocks.0.conv1" in out and "csr" in out
    assert "theoretical speedup n/a (convolutions need --arch)" in out
    code, out, err = _run(capsys, "inspect", ckpt, "--device", "cuda")  # planned for a GPU: dense at 90%
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith("blocks.0.conv1 "))
    assert row[3:5] == ["0.100", "dense"]
    code, out, err = _run(capsys, "inspect", ckpt, "--arch", "cifar_resnet")
    assert code == 0, err
    assert "form dense_zeros" in out and "theoretical speedup" in out and "n/a" not in out


def test_metrics_follow_shrinkbench():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        net[0].weight[:, :, 0] = 0  # 1/3 of the first conv pruned
        net[3].weight[5:] = 0       # half of the linear pruned
    dense_macs = [8 * 3 * 9 * 8 * 8, 8 * 4 * 9 * 4 * 4, 128 * 10]
    nonzero_macs = [8 * 3 * 6 * 8 * 8, 8 * 4 * 9 * 4 * 4, 128 * 5]
    params = sum(p.numel() for p in net.parameters())
    nonzeros = params - 8 * 3 * 3 - 128 * 5
    for model in (net, sparse_rt.sparsify(net, min_sparsity=0.3)):
        m = model_metrics(model, (3, 8, 8))
        assert [layer.dense_macs for layer in m.layers] == dense_macs
        assert [layer.nonzero_macs for layer in m.layers] == nonzero_macs
        assert (m.params, m.nonzeros) == (params, nonzeros)
        assert m.theoretical_speedup == pytest.approx(sum(dense_macs) / sum(nonzero_macs))
        assert m.compression_ratio == pytest.approx(params / nonzeros)
    sd = state_dict_metrics(net.state_dict())
    assert (sd.params, sd.nonzeros, sd.theoretical_speedup) == (params, nonzeros, None)


def _one_line_error(capsys, *argv):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith(f"sparse-rt {argv[0]}: error: ") and err.count("\n") == 1, err
    return err


def test_errors_are_one_line(tmp_path, capsys, resnet20):
    _, ckpt = resnet20
    out = tmp_path / "x.srt"
    err = _one_line_error(capsys, "convert", ckpt, "--arch", "cifar_resnet", "--arch-kwargs", "depth=32", "-o", out)
    assert "missing in checkpoint" in err and "rename=" in err
    assert not out.exists()
    err = _one_line_error(capsys, "convert", ckpt, "--arch", "resnet9000", "-o", out)
    assert "neither a zoo model" in err

    sd = models.create("cifar_resnet", depth=8).state_dict()
    sd["fc.scores"] = torch.ones(10, 64)
    torch.save(sd, tmp_path / "odd.pt")
    err = _one_line_error(capsys, "inspect", tmp_path / "odd.pt")
    assert "unknown mask layout" in err and "fc.scores" in err

    err = _one_line_error(capsys, "inspect", tmp_path / "missing.pt")
    assert "not found" in err

    code, _, _ = _run(capsys, "convert", ckpt, "--arch", "cifar_resnet", "-o", out)
    assert code == 0
    out.write_bytes(out.read_bytes()[:-64])
    err = _one_line_error(capsys, "inspect", out)
    assert "truncated" in err


@pytest.mark.parametrize("argv", [
    ("export", "cifar_resnet", "-o", "/nonexistent/x.onnx", "--input-shape", "0,32,32"),
    ("export", "cifar_resnet", "-o", "/nonexistent/x.onnx", "--batch", "-1"),
    ("export", "cifar_resnet", "-o", "/nonexistent/x.onnx", "--batch", "0"),
    ("export", "cifar_resnet", "-o", "/nonexistent/x.onnx", "--opset", "0"),
    ("export", "cifar_resnet", "-o", "/nonexistent/x.onnx", "--tolerance", "nan"),
    ("bench", "cifar_resnet", "--sparsity", "0.9", "--threads", "-1"),
    ("bench", "cifar_resnet", "--sparsity", "0.9", "--input-shape", "3,0,32"),
    ("demo", "--batch", "0"),
    ("demo", "--batch", "-2"),
    ("demo", "--time", "-1"),
], ids=lambda argv: " ".join(argv[:1] + argv[-2:]))
def test_bad_numbers_are_refused_by_the_argument_parser(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"error: argument {argv[-2]}: expected" in err
    assert len(err.splitlines()) == 1  # no usage text: one line, like every other error


def test_export_refuses_an_input_shape_the_model_does_not_take(tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "x.onnx"
    err = _one_line_error(capsys, "export", "cifar_resnet", "--arch-kwargs", "depth=8", "--input-shape", "5,32,32",
                          "--no-check", "-o", out)
    assert "does not run on inputs of shape (1, 5, 32, 32)" in err and "3 channels" in err
    assert not out.exists()


@pytest.mark.slow
def test_export_refuses_an_opset_it_cannot_write(tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "x.onnx"
    code, _, err = _run(capsys, "export", "cifar_resnet", "--arch-kwargs", "depth=8", "--opset", "3", "--no-check",
                        "-o", out)
    assert code == 2 and "error: opset 3 cannot be exported" in err.splitlines()[-1] and "Traceback" not in err
    assert not out.exists()


def test_console_script_imports_an_arch_module_from_the_current_directory(tmp_path):
    """Before: `python -m sparse_rt` found ./mynet.py, the `sparse-rt` script did not."""
    import shutil
    import subprocess

    script = shutil.which("sparse-rt")
    if script is None:
        pytest.skip("the sparse-rt console script is not installed")
    (tmp_path / "mynet.py").write_text("from torch import nn\n\n\ndef build():\n"
                                       "    return nn.Sequential(nn.Linear(8, 4))\n")
    net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    torch.save(sparse_rt.magnitude_prune(net, 0.8).state_dict(), tmp_path / "net.pt")
    child = subprocess.run([script, "convert", "net.pt", "--arch", "mynet:build", "-o", "net.srt"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert (tmp_path / "net.srt").exists()


def test_demo_times_the_sparse_and_the_fused_model_against_dense(capsys):
    """`sparse-rt demo` (the README's `make demo`) on a small model: both sparse models checked against
    the dense one, each timed beside it."""
    code = main(["demo", "--model", "cifar_resnet", "--batch", "2", "--time", "0.05"])
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["dense"], ["sparse_rt"],
                                                                                                 ["fused"])}
    assert set(rows) == {"dense", "sparse_rt", "fused"} and all(float(row[1]) > 0 for row in rows.values())
    assert "fused: " in out and "residual sum(s)" in out  # the fusion report
    assert "max |sparse - dense|" in out

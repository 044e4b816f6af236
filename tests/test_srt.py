"""The .srt artifact: exact round trips, and clear errors for damaged or foreign files."""

import json
import os
import sys

import pytest
import torch
from helpers import Net, X, make_model, random_masks

import sparse_rt
from sparse_rt import SparseModel, models
from sparse_rt.io import (
    SrtArchError,
    SrtCorruptError,
    SrtHeaderError,
    SrtIntegrityError,
    SrtVersionError,
    read_manifest,
)


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    dense = sparse_rt.magnitude_prune(models.create("cifar_resnet", depth=8).eval(), 0.8)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in dense.state_dict().items()}}, path)
    return path


def _assert_same(a, b, x):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert list(a.summary()) == list(b.summary())
    assert a.source == b.source
    with torch.inference_mode():
        assert torch.equal(a.eval()(x), b(x))


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_round_trip_zoo_model_is_exact(tmp_path, resnet_ckpt, dtype):
    model = SparseModel.from_checkpoint(resnet_ckpt, "cifar_resnet", arch_kwargs={"depth": 8}, dtype=dtype,
                                        format="csr")
    model.save(tmp_path / "m.srt")
    loaded = sparse_rt.load(tmp_path / "m.srt")
    assert loaded.arch_spec == model.arch_spec == {"name": "cifar_resnet", "kwargs": {"depth": 8}}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float16 if dtype == "fp16" else torch.float32)
    _assert_same(model, loaded, x)
    manifest = read_manifest(tmp_path / "m.srt")
    assert manifest["format_version"] == 1 and manifest["sparse_rt_version"] == sparse_rt.__version__
    assert manifest["source"]["sha256"] == model.source["sha256"]
    layer = next(r for r in manifest["layers"] if r["name"] == "blocks.0.conv1")
    assert layer["format"] == "csr" and layer["shape"] == [16, 16, 3, 3]
    assert layer["dtype"] == ("float16" if dtype == "fp16" else "float32")


def test_round_trip_bsr_import_string_and_instance(tmp_path):
    model = make_model()
    masks = random_masks(model)
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    sparse = SparseModel.from_checkpoint(tmp_path / "dense.pt", "helpers:make_model", masks=masks,
                                         format="bsr:2x2")
    assert sparse.module.classifier[0].format == "bsr"
    sparse.save(tmp_path / "m.srt")
    with pytest.raises(SrtArchError, match="trust_arch=True"):
        sparse_rt.load(tmp_path / "m.srt")  # importing a module named by a file runs code
    _assert_same(sparse, sparse_rt.load(tmp_path / "m.srt", trust_arch=True), X)
    # converted from an instance: the file cannot name the architecture
    from_instance = SparseModel.from_checkpoint(tmp_path / "dense.pt", Net(), masks=masks, format="csr")
    from_instance.save(tmp_path / "i.srt")
    with pytest.raises(SrtArchError, match="arch="):
        sparse_rt.load(tmp_path / "i.srt")
    _assert_same(from_instance, sparse_rt.load(tmp_path / "i.srt", arch=Net()), X)


def test_sparsify_result_saves_and_needs_arch(tmp_path):
    sparse = sparse_rt.sparsify(sparse_rt.magnitude_prune(make_model(), 0.7), format="csr")
    sparse.save(tmp_path / "s.srt")
    loaded = sparse_rt.load(tmp_path / "s.srt", arch="helpers:Net")
    _assert_same(sparse, loaded, X)
    assert loaded.arch_spec == {"name": "helpers:Net", "kwargs": {}}  # a later save records it
    with pytest.raises(SrtArchError, match="layer .features.0. of the file does not exist"):
        sparse_rt.load(tmp_path / "s.srt", arch="cifar_resnet", arch_kwargs={"depth": 8})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_load_maps_the_file(tmp_path, resnet_ckpt):
    model = SparseModel.from_checkpoint(resnet_ckpt, "cifar_resnet", arch_kwargs={"depth": 8}, format="csr")
    model.save(tmp_path / "m.srt")
    values = sparse_rt.load(tmp_path / "m.srt").module.blocks[0].conv1.values
    ptr = values.data_ptr()
    with open("/proc/self/maps") as f:
        mapped = [line.split()[-1] for line in f
                  if int(line.split()[0].split("-")[0], 16) <= ptr < int(line.split()[0].split("-")[1], 16)]
    assert mapped == [str(tmp_path / "m.srt")]


@pytest.fixture
def srt_file(tmp_path, resnet_ckpt):
    path = tmp_path / "m.srt"
    SparseModel.from_checkpoint(resnet_ckpt, "cifar_resnet", arch_kwargs={"depth": 8}, format="csr").save(path)
    return path


def _split(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, data):
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + data)


def _edit_manifest(path, edit):
    header, data = _split(path)
    manifest = json.loads(header["__metadata__"]["sparse_rt"])
    edit(manifest)
    header["__metadata__"]["sparse_rt"] = json.dumps(manifest)
    _write(path, header, data)


def test_truncated_file(srt_file):
    raw = srt_file.read_bytes()
    srt_file.write_bytes(raw[:-100])
    with pytest.raises(SrtCorruptError, match="truncated"):
        sparse_rt.load(srt_file)
    srt_file.write_bytes(raw[:200])
    with pytest.raises(SrtCorruptError, match="truncated"):
        sparse_rt.load(srt_file)
    srt_file.write_bytes(raw[:5])
    with pytest.raises(SrtCorruptError, match="too short"):
        sparse_rt.load(srt_file)


def test_flipped_data_byte_fails_integrity(srt_file):
    raw = bytearray(srt_file.read_bytes())
    raw[-10] ^= 0x01
    srt_file.write_bytes(bytes(raw))
    with pytest.raises(SrtIntegrityError, match="tensor data sha256"):
        sparse_rt.load(srt_file)


def test_altered_manifest_fails_integrity(srt_file):
    def widen(manifest):
        manifest["layers"][1]["shape"] = [32, 16, 3, 3]

    _edit_manifest(srt_file, widen)
    with pytest.raises(SrtIntegrityError, match="manifest or tensor table was altered"):
        sparse_rt.load(srt_file)


def test_altered_tensor_table_fails_integrity(srt_file):
    header, data = _split(srt_file)
    name = next(k for k in header if k.endswith("conv1.values"))
    header[name]["dtype"] = "I32"  # same size, different meaning
    _write(srt_file, header, data)
    with pytest.raises(SrtIntegrityError):
        sparse_rt.load(srt_file)


def test_newer_format_version(srt_file):
    _edit_manifest(srt_file, lambda m: m.update(format_version=2, sparse_rt_version="9.0"))
    with pytest.raises(SrtVersionError, match="format version 2 .*upgrade sparse_rt"):
        sparse_rt.load(srt_file)


def test_bad_headers(tmp_path, srt_file):
    _, data = _split(srt_file)
    bad = tmp_path / "bad.srt"
    bad.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(SrtHeaderError, match="exceeds"):
        sparse_rt.load(bad)
    bad.write_bytes((4).to_bytes(8, "little") + b"{{{{" + data)
    with pytest.raises(SrtHeaderError, match="not valid JSON"):
        sparse_rt.load(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(bad))  # a plain safetensors file
    with pytest.raises(SrtHeaderError, match="no sparse_rt manifest"):
        sparse_rt.load(bad)


def test_failed_save_leaves_no_partial_file(tmp_path, srt_file, monkeypatch):
    before = srt_file.read_bytes()
    other = sparse_rt.sparsify(sparse_rt.magnitude_prune(make_model(), 0.7), format="csr")

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save(srt_file)
    with pytest.raises(OSError, match="disk full"):
        other.save(tmp_path / "new.srt")
    assert srt_file.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.srt"]

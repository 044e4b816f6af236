"""The .srt artifact: exact round trips, and clear errors for damaged or foreign files."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import Net, X, forge_srt, make_model, random_masks

import sparse_rt
from sparse_rt import SparseModel, models
from sparse_rt.io import (
    SrtArchError,
    SrtCorruptError,
    SrtError,
    SrtHeaderError,
    SrtIntegrityError,
    SrtVersionError,
    read_manifest,
    srt,
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


def _run_python(code, *args, memory_gib=4, timeout=120):
    """Runs `code` in a child Python (argv[1:] = args) under a memory cap, so that a crash (SIGBUS,
    SIGSEGV) or an allocation without bound fails this test instead of killing or swapping the run."""
    setup = ("import resource\n"
             f"resource.setrlimit(resource.RLIMIT_AS, ({memory_gib << 30}, {memory_gib << 30}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.run([sys.executable, "-c", setup + textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_loaded_model_does_not_change_with_its_file(tmp_path, resnet_ckpt):
    # Loaded tensors used to stay mapped from the file: truncating or rewriting it in place gave
    # SIGBUS or silently different weights on the next forward.
    model = SparseModel.from_checkpoint(resnet_ckpt, "cifar_resnet", arch_kwargs={"depth": 8}, format="csr")
    model.save(tmp_path / "m.srt")
    child = _run_python("""
        import sys, torch, sparse_rt
        path = sys.argv[1]
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        model = sparse_rt.load(path)
        with torch.inference_mode():
            before = model(x)
            size = len(open(path, "rb").read())
            with open(path, "r+b") as f:
                f.truncate(0)
            after_truncation = model(x)
            with open(path, "r+b") as f:
                f.write(bytes([255]) * size)
            after_rewrite = model(x)
        assert torch.equal(before, after_truncation) and torch.equal(before, after_rewrite)
        print("unchanged")
    """, tmp_path / "m.srt")
    assert child.returncode == 0 and "unchanged" in child.stdout, (child.returncode, child.stderr[-2000:])


def test_load_while_the_file_is_replaced_reads_one_file(tmp_path):
    # The loader used to open the path up to three times: a file replaced meanwhile mixed one
    # file's manifest with the other's tensors. Every load must be one file's model, or an SrtError.
    files = []
    for i, amount in enumerate((0.5, 0.9)):
        model = sparse_rt.sparsify(sparse_rt.magnitude_prune(make_model(), amount), format="csr")
        model.save(tmp_path / f"{i}.srt")
        files.append(sparse_rt.load(tmp_path / f"{i}.srt", arch="helpers:Net"))
    path = tmp_path / "m.srt"
    path.write_bytes((tmp_path / "0.srt").read_bytes())
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        path, blobs = sys.argv[1], [open(p, "rb").read() for p in sys.argv[2:]]
        end, i = time.monotonic() + 3, 0
        while time.monotonic() < end:
            with open(path + ".tmp", "wb") as f:
                f.write(blobs[i % 2])
            os.replace(path + ".tmp", path)
            i += 1
    """), str(path), str(tmp_path / "0.srt"), str(tmp_path / "1.srt")])
    loads = 0
    try:
        while writer.poll() is None:
            try:
                loaded = sparse_rt.load(path, arch="helpers:Net")
            except SrtError:
                continue
            loads += 1
            state = loaded.state_dict()
            assert any(list(f.summary()) == list(loaded.summary()) and f.state_dict().keys() == state.keys()
                       and all(torch.equal(v, state[k]) for k, v in f.state_dict().items()) for f in files)
    finally:
        writer.kill()
        writer.wait()
    assert loads > 20


def test_bert_buffers_the_file_does_not_store_are_rebuilt(tmp_path):
    # The architecture is rebuilt on the meta device; non-persistent buffers (position_ids) come
    # from the constructor, not from the file.
    kwargs = dict(layers=1, hidden=32, heads=2, intermediate=64, vocab_size=50, max_position=16)
    torch.manual_seed(0)
    torch.save(sparse_rt.magnitude_prune(models.create("bert_encoder", **kwargs), 0.8).state_dict(),
               tmp_path / "bert.pt")
    model = SparseModel.from_checkpoint(tmp_path / "bert.pt", "bert_encoder", arch_kwargs=kwargs, format="csr")
    model.save(tmp_path / "bert.srt")
    loaded = sparse_rt.load(tmp_path / "bert.srt")
    assert not any(t.is_meta for t in [*loaded.module.parameters(), *loaded.module.buffers()])
    assert torch.equal(loaded.module.embeddings.position_ids, model.module.embeddings.position_ids)
    ids = torch.randint(0, 50, (2, 9))
    with torch.inference_mode():
        assert torch.equal(loaded.module.embed(ids), model.module.embed(ids))
        hidden = torch.randn(2, 9, 32)
        assert torch.equal(loaded(hidden), model(hidden))


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


def _padded(header, manifest, body, nbytes):
    """Adds a tensor of `nbytes` to the file: a forger's way to raise the size-based bounds."""
    end = len(body)
    header["pad"] = {"dtype": "U8", "shape": [nbytes], "data_offsets": [end, end + nbytes]}
    body.extend(bytes(nbytes))


def test_forged_architecture_is_refused_before_it_is_allocated(tmp_path, srt_file):
    # A 1 MiB file naming wrn-10-118 (1.03e9 elements) passed the old bound of 1024 elements per
    # byte and was then built for real: 4 GiB, a RuntimeError under a 3 GiB cap.
    def forge(header, manifest, body):
        _padded(header, manifest, body, (1 << 20) - srt_file.stat().st_size)
        manifest["arch"] = {"name": "wrn", "kwargs": {"depth": 10, "widen_factor": 118}}

    forge_srt(srt_file, tmp_path / "forged.srt", forge)
    child = _run_python("""
        import sys, sparse_rt
        from sparse_rt.io import SrtArchError
        try:
            sparse_rt.load(sys.argv[1])
        except SrtArchError as e:
            print("refused:", e)
    """, tmp_path / "forged.srt", memory_gib=3)
    assert child.returncode == 0 and "is larger than the file can hold" in child.stdout, child.stderr[-2000:]


def _empty_tensors_header(count):
    table = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(count))
    return ('{' + table + ',"__metadata__":{"sparse_rt":"{}"}}').encode()


@pytest.mark.parametrize("count,message", [
    (900_000, r"header length \d+ exceeds the 8388608-byte limit"),  # 57 MiB: 56-78 s before
    (srt.MAX_TENSORS + 1, r"32769 tensors exceed the limit of 32768"),
])
def test_hostile_header_is_refused_cheaply(tmp_path, count, message):
    head = _empty_tensors_header(count)
    (tmp_path / "h.srt").write_bytes(len(head).to_bytes(8, "little") + head)
    started = time.perf_counter()
    with pytest.raises(SrtHeaderError, match=message):
        sparse_rt.load(tmp_path / "h.srt", arch=Net())
    assert time.perf_counter() - started < 1


def _nested(depth):
    return "[" * depth + "]" * depth


def _ensemble_srt(tmp_path):
    ensemble = sparse_rt.SparseEnsemble.from_models(
        [sparse_rt.magnitude_prune(models.create("cifar_resnet", depth=8), 0.8) for _ in range(2)], fuse=False)
    for member in ensemble.members:
        member.arch_spec = {"name": "cifar_resnet", "kwargs": {"depth": 8}}
    ensemble.save(tmp_path / "ens.srt")
    return tmp_path / "ens.srt"


def _edit_raw_manifest(path, edit):
    """Replaces the manifest's JSON text by edit(text), unsigned: for text json.dumps cannot write."""
    header, data = _split(path)
    header["__metadata__"]["sparse_rt"] = edit(header["__metadata__"]["sparse_rt"])
    _write(path, header, data)


def _signed(edit):
    return lambda path: forge_srt(path, path, lambda header, manifest, body: edit(header, manifest))


def _entry(header, suffix):
    return header[next(name for name in header if name.startswith("0.") and name.endswith(suffix))]


def _arch(**kwargs):
    return _signed(lambda h, m: m.update(arch={"name": "mobilenet_v2", "kwargs": kwargs}))


def _members(edit):
    return _signed(lambda h, m: edit(m["ensemble"]))


@pytest.mark.parametrize("ensemble,forge,error,message", [
    (False, lambda p: _edit_raw_manifest(p, lambda t: t[:-1] + ',"deep":' + _nested(100_000) + "}"),
     SrtHeaderError, r"the sparse_rt manifest is not valid JSON \(RecursionError"),
    (False, lambda p: p.write_bytes((100_000).to_bytes(8, "little") + b"[" * 100_000),
     SrtHeaderError, r"header is not valid JSON \(RecursionError"),
    (False, lambda p: _edit_raw_manifest(p, lambda t: t[:-1] + ',"big":' + "9" * 5000 + "}"),
     SrtHeaderError, r"manifest is not valid JSON \(ValueError: Exceeds the limit"),
    (False, _arch(width_mult=float("inf")), SrtHeaderError, r"finite numbers of at most 64 bits"),
    (False, _arch(width_mult=float("nan")), SrtHeaderError, r"finite numbers"),
    (False, _arch(width_mult=1e300), SrtArchError, r"cannot rebuild the architecture"),
    (False, _arch(num_classes=10**30), SrtHeaderError, r"finite numbers of at most 64 bits"),
    (False, _signed(lambda h, m: m["layers"][0].update(format="bsr4x4")), SrtHeaderError,
     r"malformed manifest record 0"),
    (False, _signed(lambda h, m: m["layers"][0].update(density="x")), SrtHeaderError, r"malformed manifest record 0"),
    (True, _members(lambda e: e.update(combine=["mean_prob"])), SrtHeaderError, r"combine rule .* is none of"),
    (True, _members(lambda e: e.update(combine=5)), SrtHeaderError, r"combine rule .* is none of"),
    (True, _members(lambda e: e["members"][0].update(source=7)), SrtHeaderError, r"ensemble record is malformed"),
    (True, _members(lambda e: e["members"][0].update(arch={"name": "wrn", "kwargs": [1]})), SrtHeaderError,
     r"architecture record is malformed"),
    (True, _signed(lambda h, m: _entry(h, ".running_mean").update(dtype="X9")), SrtHeaderError,
     r"tensor '0\.\S+running_mean' has a malformed header entry"),
    (True, _signed(lambda h, m: _entry(h, ".running_mean").update(shape=[1, 2])), SrtCorruptError,
     r"tensor '0\.\S+running_mean' of shape \[1, 2\] .* do not match its size"),
    (True, _signed(lambda h, m: _entry(h, ".running_mean").update(data_offsets=[0, 2**70])), SrtCorruptError,
     r"takes bytes \[0, 1180591620717411303424\)"),
])
def test_forged_manifests_raise_srt_errors(tmp_path, srt_file, ensemble, forge, error, message):
    # Each used to escape as RecursionError, ValueError, OverflowError, TypeError or SafetensorError.
    path = _ensemble_srt(tmp_path) if ensemble else srt_file
    forge(path)
    with pytest.raises(error, match=message):
        sparse_rt.load(path)


def test_non_regular_paths_are_refused_without_blocking(tmp_path):
    """A FIFO would block an open() for reading until a writer came; a folder or a device is no
    .srt file either. Run in a child with a timeout, so a regression fails instead of hanging."""
    fifo = tmp_path / "model.srt"
    os.mkfifo(fifo)
    code = ("import sparse_rt, sys\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        sparse_rt.load(path)\n"
            "    except sparse_rt.io.SrtCorruptError as e:\n"
            "        print(e)\n")
    child = subprocess.run([sys.executable, "-c", code, str(fifo), str(tmp_path), "/dev/zero"],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [f"{fifo}: a FIFO, not a regular file: not a .srt file",
                                         f"{tmp_path}: a folder, not a regular file: not a .srt file",
                                         "/dev/zero: a device or socket, not a regular file: not a .srt file"]

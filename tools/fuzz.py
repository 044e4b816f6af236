"""Fuzzer of sparse_rt's untrusted-input surfaces (hypothesis-driven).

    python tools/fuzz.py --cases 100000                 # all targets, cases split evenly
    python tools/fuzz.py --cases 5000 --targets ops     # one target
    python tools/fuzz.py --replay build/fuzz/crashes/ops-3.case

Targets (each with the exception type it documents; any other type is "unexpected"):
  srt         sparse_rt.load on mutated valid .srt files (models and an ensemble): truncation, bit
              flips, byte spans, header length, random bytes, and JSON / index-array edits whose
              sha256 are recomputed (a hostile file passes the integrity check); forged tensor
              tables and ensemble records, manifests with deeply nested JSON, 5000-digit integers,
              Infinity/NaN in the arch kwargs. A file that loads must then run.       SrtError
  checkpoint  sparse_rt.ingest.read_checkpoint on mutated torch.save files (zip and legacy),
              their pickles rewritten inside a valid zip, safetensors files, random bytes, bool /
              complex / sparse COO and CSR / meta / quantized tensors, raw and legacy pickle
              payloads, zip bombs (a small file declaring a huge entry), non-tensors in mask lists
              and extreme cs_s0.                                                      IngestError
  ops         torch.ops.sparse_rt.* with random tensors (dtype, shape, values) and integer
              arguments, full index checks on; a call that succeeds must match the reference.
                                                      RuntimeError / ValueError "sparse_rt.<op>: ..."
  geometry    csr_conv2d with related large geometry (channels, kernel, stride, padding,
              dilation near 2^19, 2^27, 2^31, 2^62, combined so their products overflow int32 /
              int64 or ask for huge buffers) through four surfaces: the op, a SparseConv2d
              layer, a .srt file holding the conv and an ONNX session. A call that succeeds must
              match a direct reference (computed from the output positions, so huge padding
              costs nothing).                      as ops; SparseConv2d ValueError; SrtError; ValueError
  layer       SparseLinear (CSR, BSR) / SparseConv2d .load_state_dict with partial or mixed state
              dicts (key subsets, other lengths, dtypes, shapes, contiguity), strict and assign
              True/False. A refused load must leave the layer unchanged; an accepted one must
              leave a layer whose forward matches a dense reference of its weight (else "wrong").
                                   ValueError "layer '...'", RuntimeError "Error(s) in loading state_dict"
  onnx        sparse_rt.onnx.session on sparse-flavour files exported once per worker, with forged
              weights (indices, lengths, fp16 values, BSR blocks taller than 64, kernel larger than
              the input, in_features other than the input width, large attributes) placed in the
              main graph or inside If / Loop / Scan subgraphs (as outer-scope or subgraph
              initializers or Constant nodes). A session that is created must run and match the
              reference of the weights it was given.                                    ValueError
  files       .srt loads while a thread truncates, rewrites in place or os.replace-s the file with
              another valid file (other sparsity, format or architecture): the result must be one
              file's model (its output matches that file's reference) or an SrtError; after a
              load the file is changed or removed and the model must still give the same output.
              Non-regular paths (FIFO, directory, /dev/zero, /dev/null, symlink loops) given to
              sparse_rt.load and read_checkpoint.                          SrtError / IngestError
  cli         sparse_rt.cli.main (in-process) with hostile arguments: non-regular and damaged
              files, extreme numbers, malformed shapes, formats, kwargs and renames, outputs that
              cannot be written. Exit status 0, or 2 with stderr ending in one "sparse-rt ...
              error:" line (argparse's usage lines may precede it); an escaping exception or
              another status is "unexpected". Warnings are ignored.

Each target runs in a worker subprocess under a memory cap (--memory-gib, RLIMIT_AS), so a crash
(segfault, abort) is detected: the parent counts it, keeps the input that caused it under
WORKDIR/crashes/ and restarts the worker. The worker stamps a progress file before every case; a
case running longer than --case-timeout seconds is a hang: the parent kills the worker's process
group, keeps the input the same way and restarts it. Every case ends as ok, rejected (the
documented exception type), unexpected (another exception: a bug in the error handling), wrong (a
result that differs from the reference, a layer left changed or unrunnable), crash or hang. The
first input of each distinct unexpected / wrong finding is kept under WORKDIR/findings/ (with what
was raised and its traceback beside it, NAME.case.txt); every kept input reruns with --replay, under
the same memory cap.
"""

import argparse
import datetime
import errno
import hashlib
import io
import json
import os
import pickle
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
import zipfile

TARGETS = ("srt", "checkpoint", "ops", "geometry", "layer", "onnx", "files", "cli")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- shared by the targets (imported lazily: the parent process needs no torch) -------------------

def _tiny_net():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 4))


def _pruned(seed=0):
    import torch

    import sparse_rt

    torch.manual_seed(seed)
    return sparse_rt.magnitude_prune(_tiny_net().eval(), 0.7)


def _mutate_bytes(data, draw):
    """A structure-blind mutation of `data` (bytes), chosen by hypothesis."""
    st = draw.st
    kind = draw(st.sampled_from(["truncate", "flip", "span", "random", "extend"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "flip":
        out = bytearray(data)
        # Bits near the start (length field, header) are where structure lives: bias towards them.
        limit = draw(st.sampled_from([min(len(out), 64), min(len(out), 4096), len(out)]))
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, limit - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if kind == "span":
        start = draw(st.integers(0, len(data)))
        span = draw(st.binary(min_size=1, max_size=64))
        return data[:start] + span + data[start + len(span):]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=256))
    return draw(st.binary(max_size=512))


def _json_value(draw):
    st = draw.st
    return draw(st.one_of(
        st.none(), st.booleans(), st.integers(-3, 300), st.sampled_from([2**31, 2**40, -2**63, 10**30]),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
        st.sampled_from(["F32", "F16", "BF16", "I32", "I64", "U8", "float32", "float16", "bfloat16",
                         "int32", "float64", "csr", "bsr", "dense", "Linear", "Conv2d"]),
        st.lists(st.integers(-2, 70), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)))


def _edit_json(obj, draw, depth=0):
    """Replaces, deletes or adds one entry somewhere inside a JSON object (in place)."""
    st = draw.st
    if isinstance(obj, dict) and obj:
        key = draw(st.sampled_from(sorted(obj)))
    elif isinstance(obj, list) and obj:
        key = draw(st.integers(0, len(obj) - 1))
    else:
        return
    if isinstance(obj[key], (dict, list)) and obj[key] and depth < 4 and draw(st.booleans()):
        return _edit_json(obj[key], draw, depth + 1)
    action = draw(st.sampled_from(["replace", "replace", "delete"]))
    if action == "delete":
        del obj[key]
    else:
        obj[key] = _json_value(draw)


class _Draw:
    """hypothesis' data.draw with the strategies module at hand."""

    def __init__(self, data):
        from hypothesis import strategies

        self.data, self.st = data, strategies

    def __call__(self, strategy):
        return self.data.draw(strategy)


# --- target: .srt loader ---------------------------------------------------------------------------

class SrtTarget:

    def __init__(self, workdir):
        import torch

        import sparse_rt
        from sparse_rt import SparseModel, models
        from sparse_rt import io as srt_io
        from sparse_rt.io import srt

        self.srt, self.torch, self.sparse_rt = srt, torch, sparse_rt
        self.expected = (srt_io.SrtError, FileNotFoundError)
        self.path = os.path.join(workdir, "srt.input")
        files = []
        # A zoo architecture (rebuilt from the manifest) in CSR ...
        torch.manual_seed(0)
        ckpt = os.path.join(workdir, "zoo.pt")
        torch.save(sparse_rt.magnitude_prune(models.create("cifar_resnet", depth=8).eval(), 0.8).state_dict(), ckpt)
        zoo = SparseModel.from_checkpoint(ckpt, "cifar_resnet", arch_kwargs={"depth": 8}, format="csr")
        files.append((self._saved(zoo, "zoo.srt"), None, torch.randn(1, 3, 32, 32)))
        ensemble = sparse_rt.SparseEnsemble.from_models([_pruned(0), _pruned(1)], min_sparsity=0.0)
        files.append((self._saved(ensemble, "ensemble.srt"), _tiny_net(), torch.randn(2, 3, 8, 8)))
        # ... and a small module instance (arch= at load) in CSR and BSR.
        for fmt in ("csr", "bsr:2x2"):
            model = sparse_rt.sparsify(_pruned(), format=fmt, min_sparsity=0.0)
            files.append((self._saved(model, f"tiny-{fmt[:3]}.srt"), _tiny_net(), torch.randn(2, 3, 8, 8)))
        self.bases = [(open(p, "rb").read(), arch, x) for p, arch, x in files]

    def _saved(self, model, name):
        path = os.path.join(os.path.dirname(self.path), name)
        model.save(path)
        return path

    def _split(self, data):
        n = int.from_bytes(data[:8], "little")
        return json.loads(data[8:8 + n]), data[8 + n:]

    def _signed(self, header, body):
        """Re-serializes header + body with both sha256 recomputed, as a forger would."""
        meta = header.pop("__metadata__")
        manifest = json.loads(meta[self.srt.MANIFEST_KEY])
        if isinstance(manifest, dict):
            manifest["tensors_sha256"] = hashlib.sha256(body).hexdigest()
            manifest["header_sha256"] = self.srt.header_digest(header, manifest)
            meta[self.srt.MANIFEST_KEY] = json.dumps(manifest)
        header["__metadata__"] = meta
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        return len(head).to_bytes(8, "little") + head + body

    def _mutate(self, data, draw):
        st = draw.st
        kind = draw(st.sampled_from(["bytes", "header", "manifest", "indices", "version", "length", "raw",
                                     "table", "ensemble"]))
        if kind == "bytes":
            return _mutate_bytes(data, draw)
        if kind == "raw":
            return self._raw_value(data, draw)
        if kind == "length":
            return draw(st.sampled_from([2**63, 2**40, 64 << 20, 0, 7])).to_bytes(8, "little") + data[8:]
        header, body = self._split(data)
        if kind == "version":
            manifest = json.loads(header["__metadata__"][self.srt.MANIFEST_KEY])
            manifest["format_version"] = _json_value(draw)
            header["__metadata__"][self.srt.MANIFEST_KEY] = json.dumps(manifest)
        elif kind == "manifest":
            manifest = json.loads(header["__metadata__"][self.srt.MANIFEST_KEY])
            for _ in range(draw(st.integers(1, 3))):
                _edit_json(manifest, draw)
            header["__metadata__"][self.srt.MANIFEST_KEY] = json.dumps(manifest)
        elif kind == "ensemble":  # forge the ensemble record (or make a model file claim to be one)
            manifest = json.loads(header["__metadata__"][self.srt.MANIFEST_KEY])
            manifest["kind"] = "ensemble"
            record = manifest.get("ensemble")
            if isinstance(record, dict) and record and draw(st.booleans()):
                for _ in range(draw(st.integers(1, 3))):
                    _edit_json(record, draw)
            else:
                manifest["ensemble"] = draw(st.sampled_from([{"members": 2**31, "combine": "mean_prob"},
                                                             {"members": [{"prefix": "0."}] * 3}, [], 7]))
            header["__metadata__"][self.srt.MANIFEST_KEY] = json.dumps(manifest)
        elif kind == "table":  # one tensor entry forged: dtype, shape, offsets
            names = sorted(k for k in header if k != "__metadata__")
            if not names:  # a file without tensors has no table entry to forge
                return data
            name = draw(st.sampled_from(names))
            entry, field = header[name], draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            start, end = entry["data_offsets"]
            entry[field] = draw(st.sampled_from({
                "dtype": ["F64", "BOOL", "C64", "U64", "XX", ""],
                "shape": [[2**62, 2**62], [-1], [2**31, 0], [], [0], [2**20, 2**20, 2**20]],
                "data_offsets": [[end, start], [0, 2**63], [start, end + 4], [-8, end], [start, 2**40]]}[field]))
        elif kind == "header":
            table = {k: v for k, v in header.items() if k != "__metadata__"}
            for _ in range(draw(st.integers(1, 3))):
                _edit_json(table, draw)
            header = {**table, "__metadata__": header["__metadata__"]}
        else:  # overwrite entries of an index array with chosen int32 values
            names = sorted(k for k in header if k.endswith(("crow_indices", "col_indices")))
            if not names:  # an ensemble's members, or a model kept dense: no index array to overwrite
                return data
            entry = header[draw(st.sampled_from(names))]
            start, end = entry["data_offsets"]
            body = bytearray(body)
            for _ in range(draw(st.integers(1, 4))):
                if end - start < 4:
                    break
                i = start + 4 * draw(st.integers(0, (end - start) // 4 - 1))
                value = draw(st.one_of(st.integers(-2, 80), st.sampled_from([2**31 - 1, -2**31, 2**20])))
                body[i:i + 4] = value.to_bytes(4, "little", signed=True)
            body = bytes(body)
        return self._signed(header, body)

    def _raw_value(self, data, draw):
        """Puts a value json.dumps cannot write into the manifest (the arch kwargs or a layer
        record) or the tensor table, as raw JSON text: deep nesting, a 5000-digit integer,
        Infinity / NaN. The digests are recomputed where the text still parses."""
        st = draw.st
        raw = draw(st.sampled_from(["[" * 100000 + "]" * 100000, "9" * 5000, "-" + "9" * 5000, "Infinity", "NaN",
                                    "-Infinity", "1e400", '{"a":' * 50000 + "1" + "}" * 50000]))
        header, body = self._split(data)
        manifest = json.loads(header["__metadata__"][self.srt.MANIFEST_KEY])
        where = draw(st.sampled_from(["arch", "layer", "table"]))
        if where == "arch" and isinstance(manifest.get("arch"), dict):
            key = draw(st.sampled_from(["depth", "num_classes", "width"]))
            manifest["arch"].setdefault("kwargs", {})[key] = "@RAW@"
        elif where in ("arch", "layer") and manifest.get("layers"):
            record = manifest["layers"][draw(st.integers(0, len(manifest["layers"]) - 1))]
            record[draw(st.sampled_from(sorted(record)))] = "@RAW@"
        else:
            header["fuzz"] = "@RAW@"
        text = json.dumps(manifest).replace('"@RAW@"', raw)
        try:
            manifest = json.loads(text)
            manifest["tensors_sha256"] = hashlib.sha256(body).hexdigest()
            manifest["header_sha256"] = self.srt.header_digest(
                {k: v for k, v in header.items() if k != "__metadata__"}, manifest)
            text = json.dumps(manifest)
        except (ValueError, RecursionError, TypeError):
            pass  # unparsable here too: the loader must refuse it before any digest
        header["__metadata__"][self.srt.MANIFEST_KEY] = text
        head = json.dumps(header).replace('"@RAW@"', raw).encode()
        head += b" " * (-len(head) % 8)
        return len(head).to_bytes(8, "little") + head + body

    def case(self, draw):
        base, arch, x = self.bases[draw(draw.st.integers(0, len(self.bases) - 1))]
        data = self._mutate(base, draw)
        with open(self.path, "wb") as f:
            f.write(data)
        return self.run(arch, x)

    def run(self, arch, x):
        model = self.sparse_rt.load(self.path, arch=arch)
        with self.torch.inference_mode():
            model(x)  # a file that loads must run: its indices were validated at load

    def replay(self, path):
        shutil.copyfile(path, self.path)
        for arch, x in ((None, self.bases[0][2]), (_tiny_net(), self.bases[1][2])):
            try:
                self.run(arch, x)
                print("loaded and ran")
            except Exception as e:  # noqa: BLE001  (replay reports whatever happens)
                print(f"{type(e).__name__}: {e}")


# --- target: checkpoint loader ---------------------------------------------------------------------

class _Payload:
    """A pickle that would run code: the safe loader must refuse it without running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class CheckpointTarget:

    def __init__(self, workdir):
        import safetensors.torch
        import torch

        from sparse_rt import ingest

        self.read, self.expected = ingest.read_checkpoint, (ingest.IngestError,)
        self.workdir = workdir
        self.marker = os.path.join(workdir, "payload-ran")
        model = _pruned()
        sd = model.state_dict()
        masks = {k + "_mask": (v != 0).float() for k, v in sd.items() if k.endswith("weight")}
        weight = next(k for k in sd if k.endswith("weight"))
        odd_tensors = [torch.ones(3, dtype=torch.bool), torch.randn(2, dtype=torch.complex64),
                       torch.randn(3, 3).to_sparse(), torch.randn(3, 3).to_sparse_csr(), torch.empty(3, device="meta"),
                       torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)]
        objects = [sd, {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3, "best_acc1": 0.5},
                   {**{k.replace("weight", "weight_orig"): v for k, v in sd.items()}, **masks},
                   {"model": sd, "payload": _Payload(self.marker)},
                   *({**sd, weight: t} for t in odd_tensors),
                   # rigl-torch's mask list, holding non-tensors; Continuous Sparsification's scores
                   {"model": sd, "pruner": {"backward_masks": [1, "mask", None, torch.ones(2), [torch.ones(1)]]}},
                   {**sd, **{k.replace("weight", "mask_weight"): torch.randn_like(v) for k, v in sd.items()
                             if k.endswith("weight")}}]
        self.bases = []
        for i, obj in enumerate(objects):
            for zipped in (True, False):
                buf = io.BytesIO()
                torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
                self.bases.append((buf.getvalue(), ".pt"))
        self.bases.append((safetensors.torch.save(sd), ".safetensors"))
        self.bases.append((pickle.dumps({"model": _Payload(self.marker)}, protocol=2), ".pt"))  # a raw pickle
        self.bases.append((self._zip_bomb(self.bases[0][0]), ".pt"))
        self.bases.append((self._legacy_bomb(self.bases[1][0]), ".pt"))

    @staticmethod
    def _legacy_bomb(data):
        """`data` (a legacy torch.save file) with every storage declaring 2^30 elements: a small
        file whose reader would allocate by the declared counts. In each storage's persistent id
        the count follows the location string ("cpu", then a memo op): BININT1, BININT2 or BININT."""
        count = re.compile(rb"(cpu(?:q.|r....|\x94)?)(K.|M..|J....)", re.S)
        return count.sub(lambda m: m.group(1) + b"J" + (2**30).to_bytes(4, "little"), data)

    @staticmethod
    def _zip_bomb(data):
        """`data` (a zip) with every entry declaring an uncompressed size near 4 GiB: a small file
        whose reader would allocate by the declared size."""
        out = bytearray(data)
        for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = out.find(signature)
            while at >= 0:
                out[at + size_at:at + size_at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
                at = out.find(signature, at + 4)
        return bytes(out)

    def _mutate_pickle_in_zip(self, data, draw):
        """Mutates data.pkl and rewrites a well-formed zip, so the unpickler itself is exercised."""
        src = zipfile.ZipFile(io.BytesIO(data))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                blob = src.read(info)
                if info.filename.endswith("data.pkl"):
                    blob = _mutate_bytes(blob, draw)
                dst.writestr(info.filename, blob)
        return out.getvalue()

    def case(self, draw):
        st = draw.st
        data, suffix = self.bases[draw(st.integers(0, len(self.bases) - 1))]
        if data[:2] == b"PK" and draw(st.booleans()):
            data = self._mutate_pickle_in_zip(data, draw)
        elif draw(st.integers(0, 9)):  # leave one case in ten unmutated
            data = _mutate_bytes(data, draw)
        for old in _inputs("checkpoint", self.workdir):
            os.remove(old)
        self.path = os.path.join(self.workdir, "checkpoint.input" + suffix)
        with open(self.path, "wb") as f:
            f.write(data)
        # Continuous Sparsification's s0 (--cs-s0), extreme values included.
        cs_s0 = draw(st.sampled_from([0.0, 0.0, 0.0, 1e308, -1e308, float("inf"), float("nan"), 5e-324, -50.0]))
        try:
            self.read(self.path, cs_s0=cs_s0)
        finally:
            if os.path.exists(self.marker):  # the payload ran: the loader unpickled it
                os.remove(self.marker)
                raise AssertionError("a pickled callable ran during a safe load")

    def replay(self, path):
        try:
            self.read(path)
            print("read")
        except Exception as e:  # noqa: BLE001
            print(f"{type(e).__name__}: {e}")


# --- target: op argument checking ------------------------------------------------------------------

def _op_error(e):
    """The ops' documented error: RuntimeError / ValueError whose message starts "sparse_rt.<op>: "."""
    return isinstance(e, (RuntimeError, ValueError)) and str(e).startswith("sparse_rt.")


def _onnx_session_error(e):
    """sparse_rt.onnx.session's documented errors: ValueError for a file or an X it refuses, and
    RuntimeError for a kernel failure (an op error, or an output too large for the memory left)."""
    return isinstance(e, ValueError) or (
        isinstance(e, RuntimeError) and (_op_error(e.__cause__) or isinstance(e.__cause__, MemoryError)))


class OpsTarget:
    documented = staticmethod(_op_error)

    def __init__(self, workdir):
        import torch

        import sparse_rt

        if not sparse_rt.ops.HAS_COMPILED_OPS:
            raise SystemExit("the ops target needs the compiled extension (sparse_rt._C)")
        sparse_rt.ops.set_full_index_checks(True)
        self.torch, self.ref, self.path = torch, sparse_rt.ops.reference, os.path.join(workdir, "ops.input")
        self.dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64,
                       torch.uint8, torch.bool]

    def _tensor(self, draw, dtype=None, shape=None):
        st, torch = draw.st, self.torch
        dtype = dtype or draw(st.sampled_from(self.dtypes))
        shape = shape if shape is not None else draw(st.lists(st.integers(0, 3), max_size=4))
        n = int(torch.Size(shape).numel())
        t = torch.tensor(draw(st.lists(st.integers(-3, 12), min_size=n, max_size=n)), dtype=torch.int64)
        t = t.to(dtype).reshape(shape)
        if t.dim() >= 2 and draw(st.integers(0, 5)) == 0:
            t = t.transpose(0, 1)  # non-contiguous
        return t

    def _weight(self, draw, rows, cols, block=None):
        """A CSR/BSR triple near validity (random sparsity), then sometimes damaged."""
        st, torch = draw.st, self.torch
        counts = [draw(st.integers(0, cols)) for _ in range(rows)]
        crow = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0).to(torch.int32)
        col = torch.tensor([c for n in counts for c in range(n)], dtype=torch.int32)
        nnz = col.numel()
        vshape = [nnz, *block] if block else [nnz]
        values = torch.randn(vshape)
        which = draw(st.integers(0, 7))
        if which == 1 and nnz:
            col[draw(st.integers(0, nnz - 1))] = draw(st.sampled_from([-1, cols, cols + 7, 2**31 - 1, -2**31]))
        elif which == 2:
            crow[draw(st.integers(0, rows))] = draw(st.integers(-2, nnz + 3))
        elif which == 3:
            crow = self._tensor(draw)
        elif which == 4:
            col = self._tensor(draw)
        elif which == 5:
            values = self._tensor(draw)
        elif which == 6:
            values = values.to(draw(st.sampled_from(self.dtypes)))
        return crow, col, values

    def _args(self, draw):
        st, torch = draw.st, self.torch
        op = draw(st.sampled_from(["csr_linear", "bsr_linear", "csr_conv2d"]))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
        if op == "csr_conv2d":
            cin, groups = draw(st.integers(1, 4)), draw(st.sampled_from([1, 1, 2]))
            k = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
            rows = draw(st.integers(0, 4)) * groups
            crow, col, values = self._weight(draw, rows, max(cin // groups, 1) * k[0] * k[1])
            x = (self._tensor(draw) if draw(st.integers(0, 5)) == 0 else
                 torch.randn(draw(st.integers(0, 2)), cin, draw(st.integers(1, 6)), draw(st.integers(1, 6))))
            ints = lambda lo, hi: draw(st.one_of(st.lists(st.integers(lo, hi), min_size=2, max_size=2),
                                                 st.lists(st.sampled_from([-1, 0, 2**31, 2**62]), max_size=3)))
            geometry = [k if draw(st.integers(0, 3)) else ints(0, 4), ints(1, 3), ints(0, 2), ints(1, 2)]
            cin_arg = cin if draw(st.integers(0, 3)) else draw(st.sampled_from([0, -1, cin + 1, 2**40]))
            groups_arg = groups if draw(st.integers(0, 3)) else draw(st.sampled_from([0, -1, 3, 2**62]))
            bias = torch.randn(rows) if draw(st.booleans()) else None
            args = [x, crow, col, values, bias, cin_arg, *geometry, groups_arg, draw(st.booleans())]
        else:
            block = [draw(st.integers(1, 3)), draw(st.integers(1, 3))] if op == "bsr_linear" else None
            rows, cols = draw(st.integers(0, 5)), draw(st.integers(0, 6))
            crow, col, values = self._weight(draw, rows, cols, block)
            in_features = cols * (block[1] if block else 1)
            x = (self._tensor(draw) if draw(st.integers(0, 5)) == 0 else
                 torch.randn(*draw(st.lists(st.integers(0, 3), max_size=2)), in_features))
            bias = torch.randn(rows * (block[0] if block else 1)) if draw(st.booleans()) else None
            if draw(st.integers(0, 5)) == 0:
                bias = self._tensor(draw)
            feat = in_features if draw(st.integers(0, 4)) else draw(st.sampled_from([-1, 0, in_features + 1, 2**40]))
            args = [x, crow, col, values, bias, feat, draw(st.booleans())]
        if values.is_floating_point() and values.dtype != torch.float64:
            args[3] = values.to(dtype)
            args[0] = args[0].to(dtype) if args[0].is_floating_point() and args[0].dtype != torch.float64 else args[0]
            if isinstance(args[4], torch.Tensor) and args[4].is_floating_point() and args[4].dtype != torch.float64:
                args[4] = args[4].to(dtype)
        return op, args

    def case(self, draw):
        op, args = self._args(draw)
        self.torch.save((op, args), self.path)  # what a crash leaves behind
        return self.run(op, args)

    def run(self, op, args):
        torch = self.torch
        y = getattr(torch.ops.sparse_rt, op)(*args)
        # Accepted arguments were valid: the result must match the float64 reference.
        expected = getattr(self.ref, op)(*args, compute_dtype=torch.float64).double()
        tol = 1e-4 if args[3].dtype == torch.float32 else 5e-2
        scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
        if y.shape != expected.shape or (y.numel() and (y.double() - expected).abs().max().item() > tol * scale):
            raise WrongResult(f"{op}: result differs from the reference (shape {tuple(y.shape)} vs "
                              f"{tuple(expected.shape)})")

    def replay(self, path):
        op, args = self.torch.load(path, weights_only=True)
        print(op, [(tuple(a.shape), a.dtype) if isinstance(a, self.torch.Tensor) else a for a in args])
        try:
            self.run(op, args)
            print("ok")
        except Exception as e:  # noqa: BLE001
            print(f"{type(e).__name__}: {e}")


class WrongResult(Exception):
    pass


def _check_close(y, expected, dtype, what):
    """Raises WrongResult unless y matches the float64 `expected` (tolerance of `dtype`)."""
    import torch

    tol = 1e-4 if dtype == torch.float32 else 5e-2
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    if tuple(y.shape) != tuple(expected.shape) or (
            y.numel() and not ((y.double() - expected).abs().max().item() <= tol * scale)):
        raise WrongResult(f"{what}: result differs from the reference (shape {tuple(y.shape)} vs "
                          f"{tuple(expected.shape)})")


# --- target: related large convolution geometry ----------------------------------------------------

# Values each fine alone whose sums and products overflow int32 / int64 or size huge buffers.
_LARGE = [2**19 - 1, 2**19, 2**20 + 1, 2**27, 2**30, 2**31 - 1, 2**31, 2**62]


def _direct_conv2d(x, crow, col, values, kernel, bias, stride, padding, dilation, groups, limit=20000):
    """Float64 convolution computed per output position and weight entry with Python ints (no
    overflow, no padded copy of the input, no dense weight); None when the output times the
    weight's entries exceeds `limit`."""
    import torch

    n, cin, h, w = x.shape
    cout, (kh, kw) = crow.numel() - 1, kernel
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh <= 0 or ow <= 0:
        return torch.zeros(n, cout, max(oh, 0), max(ow, 0), dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(cout), (crow[1:] - crow[:-1]).long()).tolist()
    if n * oh * ow * max(len(rows), 1) > limit:
        return None
    xd = x.double()
    out = torch.zeros(n, cout, oh, ow, dtype=torch.float64)
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1)
    cin_g = cin // groups
    for o, column, value in zip(rows, col.tolist(), values.double().tolist()):
        c, ky, kx = column // (kh * kw), column % (kh * kw) // kw, column % kw
        channel = (o // (cout // groups)) * cin_g + c
        for oy in range(oh):
            iy = oy * stride[0] - padding[0] + ky * dilation[0]
            if not 0 <= iy < h:
                continue
            for ox in range(ow):
                ix = ox * stride[1] - padding[1] + kx * dilation[1]
                if 0 <= ix < w:
                    out[:, o, oy, ox] += value * xd[:, channel, iy, ix]
    return out


class GeometryTarget:
    SURFACES = ("op", "layer", "srt", "onnx")

    def __init__(self, workdir):
        import torch

        import sparse_rt
        from sparse_rt.io import SrtError

        if not sparse_rt.ops.HAS_COMPILED_OPS:
            raise SystemExit("the geometry target needs the compiled extension (sparse_rt._C)")
        sparse_rt.ops.set_full_index_checks(True)
        self.torch, self.sparse_rt, self.SrtError = torch, sparse_rt, SrtError
        self.workdir, self.path = workdir, os.path.join(workdir, "geometry.input")
        self.onnx = _OnnxBases(workdir, only=("conv",)) if _has_onnxruntime_extensions() else None

    def _draw(self, draw, surface):
        st, torch = draw.st, self.torch
        pair = lambda least: [draw(st.one_of(st.integers(least, 3), st.sampled_from(_LARGE))) for _ in range(2)]
        cin = draw(st.sampled_from([1, 2, 3, 4, 4096, 2**16]))
        groups = draw(st.sampled_from([1, 1, 1, 2])) if cin % 2 == 0 else 1
        cout = groups * draw(st.integers(1, 2))
        # Kernels stay small in the surfaces that build a dense twin (srt, onnx).
        large_kernel = surface in ("op", "layer") and draw(st.integers(0, 3)) == 0
        kernel = pair(1) if large_kernel else [draw(st.integers(1, 3)) for _ in range(2)]
        stride, padding, dilation = pair(1), pair(0), pair(1)
        hw = [draw(st.sampled_from([1, 2, 4, 5])) for _ in range(2)]
        batch = draw(st.integers(1, 2))
        cols = cin // groups * kernel[0] * kernel[1]
        nnz = [sorted({draw(st.integers(0, min(cols, 2**31 - 1) - 1)) for _ in range(draw(st.integers(0, 2)))})
               for _ in range(cout)]
        crow = torch.tensor([0] + [len(r) for r in nnz], dtype=torch.int64).cumsum(0).to(torch.int32)
        col = torch.tensor([c for r in nnz for c in r], dtype=torch.int32)
        values = torch.randn(col.numel())
        bias = torch.randn(cout) if draw(st.booleans()) else None
        x = torch.randn(batch, cin, *hw)
        return dict(x=x, crow=crow, col=col, values=values, bias=bias, cin=cin, cout=cout, kernel=kernel,
                    stride=stride, padding=padding, dilation=dilation, groups=groups, relu=draw(st.booleans()))

    def case(self, draw):
        surfaces = self.SURFACES if self.onnx else self.SURFACES[:3]
        surface = draw(draw.st.sampled_from(surfaces))
        g = dict(self._draw(draw, surface), surface=surface)
        self.torch.save(g, self.path)
        return self.run(g)

    def documented(self, e):
        # The srt surface builds its file from a SparseConv2d, so the layer's refusal counts there too.
        if _op_error(e) or (isinstance(e, ValueError) and str(e).startswith("SparseConv2d:")):
            return True
        if self.surface == "onnx":
            return _onnx_session_error(e)
        return self.surface == "srt" and isinstance(e, self.SrtError)

    def _layer(self, g):
        from sparse_rt.formats import CSR
        from sparse_rt.nn import SparseConv2d

        cols = g["cin"] // g["groups"] * g["kernel"][0] * g["kernel"][1]
        weight = CSR(g["crow"], g["col"], g["values"], (g["cout"], cols))
        return SparseConv2d(g["cin"], g["cout"], g["kernel"], weight, g["bias"], g["stride"], g["padding"],
                            g["dilation"], g["groups"])

    def run(self, g):
        torch, sparse_rt = self.torch, self.sparse_rt
        self.surface, self.geometry = g["surface"], g
        geometry = [g["kernel"], g["stride"], g["padding"], g["dilation"]]
        if self.surface == "op":
            y = torch.ops.sparse_rt.csr_conv2d(g["x"], g["crow"], g["col"], g["values"], g["bias"], g["cin"],
                                               *geometry, g["groups"], g["relu"])
        elif self.surface == "layer":
            with torch.inference_mode():
                y = self._layer(g)(g["x"])
        elif self.surface == "srt":
            y = self._through_srt(g)
        else:
            y = self._through_onnx(g)
        if self.surface != "op" and g["relu"]:
            g = dict(g, relu=False)  # only the op takes relu; the others are the plain conv
        expected = _direct_conv2d(g["x"], g["crow"], g["col"], g["values"], g["kernel"], g["bias"], g["stride"],
                                  g["padding"], g["dilation"], g["groups"])
        if expected is None:  # too many outputs for the direct reference: check the shape only
            expected_shape = (g["x"].shape[0], g["cout"], *sparse_rt.ops.geometry.conv2d_output_hw(
                g["x"].shape[2:], g["kernel"], g["stride"], g["padding"], g["dilation"]))
            if tuple(y.shape) != expected_shape:
                raise WrongResult(f"csr_conv2d via {self.surface}: shape {tuple(y.shape)}, expected {expected_shape}")
            return
        if g["relu"]:
            expected = expected.clamp_min(0)
        _check_close(y, expected, torch.float32, f"csr_conv2d via {self.surface}")

    def _through_srt(self, g):
        """Saves a model holding the conv (geometry from the layer, so the file is well-formed and
        signed) and loads it back with a matching architecture on the meta device."""
        from torch import nn

        torch = self.torch
        layer = self._layer(g)
        model = self.sparse_rt.sparsify(nn.Sequential(nn.Identity()), min_sparsity=0.0)
        model.module[0] = layer
        path = os.path.join(self.workdir, "geometry.srt")
        model.save(path)
        arch = nn.Sequential(nn.Conv2d(g["cin"], g["cout"], g["kernel"], g["stride"], g["padding"], g["dilation"],
                                       g["groups"], bias=g["bias"] is not None, device="meta"))
        loaded = self.sparse_rt.load(path, arch=arch)
        with torch.inference_mode():
            return loaded(g["x"])

    def _through_onnx(self, g):
        import numpy as np

        attributes = dict(in_channels=g["cin"], kernel_h=g["kernel"][0], kernel_w=g["kernel"][1],
                          stride_h=g["stride"][0], stride_w=g["stride"][1], pad_h=g["padding"][0],
                          pad_w=g["padding"][1], dilation_h=g["dilation"][0], dilation_w=g["dilation"][1],
                          group=g["groups"], relu=0)
        bias = g["bias"] if g["bias"] is not None else self.torch.zeros(g["cout"])
        weights = [t.numpy() for t in (g["crow"], g["col"], g["values"], bias)]
        path = os.path.join(self.workdir, "geometry.onnx")
        self.onnx.write(path, "conv", weights, attributes, placement="main", location="outer",
                        input_shape=list(g["x"].shape))
        sess = self.sparse_rt.onnx.session(path, intra_op_num_threads=1)
        y, = sess.run(None, {sess.get_inputs()[0].name: g["x"].numpy().astype(np.float32)})
        return self.torch.from_numpy(y)

    def replay(self, path):
        g = self.torch.load(path, weights_only=False)
        print({k: (tuple(v.shape) if isinstance(v, self.torch.Tensor) else v) for k, v in g.items() if k != "x"})
        _replay_run(lambda: self.run(g))


def _replay_run(fn):
    try:
        fn()
        print("ok")
    except Exception as e:  # noqa: BLE001  (replay reports whatever happens)
        print(f"{type(e).__name__}: {e}")


def _has_onnxruntime_extensions():
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime_extensions  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


# --- target: partial state dicts -------------------------------------------------------------------

class LayerTarget:
    KEYS = ("crow_indices", "col_indices", "values", "bias")

    def __init__(self, workdir):
        import torch

        import sparse_rt  # noqa: F401  (registers the ops)

        self.torch, self.path = torch, os.path.join(workdir, "layer.input")

    def _layer(self, kind, seed):
        import torch
        from torch import nn

        from sparse_rt.nn import SparseConv2d, SparseLinear

        torch.manual_seed(seed)
        dense = nn.Conv2d(4, 6, 3, padding=1) if kind == "conv" else nn.Linear(8, 6)
        mask = torch.rand_like(dense.weight) < (0.3 + 0.1 * seed)
        if kind == "conv":
            return SparseConv2d.from_dense(dense, mask)
        return SparseLinear.from_dense(dense, mask, format=kind, blocksize=(2, 2))

    def _tensor_edit(self, t, draw):
        st, torch = draw.st, self.torch
        kind = draw(st.sampled_from(["as_is", "as_is", "shorter", "longer", "dtype", "empty", "2d",
                                     "noncontiguous", "values"]))
        if kind == "shorter":
            return t[:-1] if t.numel() else t
        if kind == "longer":
            return torch.cat([t, t[-1:]]) if t.numel() else torch.zeros(1, dtype=t.dtype)
        if kind == "dtype":
            return t.to(draw(st.sampled_from([torch.int64, torch.int32, torch.float64, torch.float16, torch.bool])))
        if kind == "empty":
            return t[:0]
        if kind == "2d":
            return t.unsqueeze(0)
        if kind == "noncontiguous":
            return torch.stack([t, t], -1)[..., 0]
        if kind == "values" and t.numel():
            t = t.clone()
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([-1, 0, 2**31 - 1, 7, 100]))
        return t

    def case(self, draw):
        st = draw.st
        kind = draw(st.sampled_from(["csr", "bsr", "conv"]))
        donors = [self._layer(kind, seed).state_dict() for seed in (1, 2)]
        state = {}
        for key in self.KEYS:
            source = draw(st.sampled_from(["own", "donor", "other_donor", "absent", "absent"]))
            if source != "absent":
                own = self._layer(kind, 0).state_dict()
                t = {"own": own, "donor": donors[0], "other_donor": donors[1]}[source][key]
                state[key] = self._tensor_edit(t, draw)
        if draw(st.integers(0, 5)) == 0:
            state["unexpected"] = self.torch.zeros(1)
        options = dict(strict=draw(st.booleans()), assign=draw(st.booleans()))
        self.torch.save((kind, state, options), self.path)
        return self.run(kind, state, options)

    def documented(self, e):
        return ((isinstance(e, ValueError) and str(e).startswith("layer '"))
                or (isinstance(e, RuntimeError) and str(e).startswith("Error(s) in loading state_dict")))

    def run(self, kind, state, options):
        torch = self.torch
        layer = self._layer(kind, 0)
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        try:
            layer.load_state_dict(state, **options)
        except Exception:
            after = layer.state_dict()
            same = after.keys() == before.keys() and all(
                after[k].dtype == v.dtype and after[k].shape == v.shape and torch.equal(after[k], v)
                for k, v in before.items())
            if not same:
                raise WrongResult(f"{kind}: a refused load_state_dict changed the layer") from None
            raise
        x = torch.randn(2, 4, 5, 5) if kind == "conv" else torch.randn(3, 8)
        try:
            with torch.inference_mode():
                y = layer(x)
            weight, bias = layer.dense_weight().double(), None if layer.bias is None else layer.bias.double()
        except Exception as e:  # noqa: BLE001  (an accepted state dict must leave a runnable layer)
            raise WrongResult(f"{kind}: accepted state dict leaves the layer unrunnable: {type(e).__name__}: "
                              f"{str(e)[:120]}") from None
        if kind == "conv":
            expected = torch.nn.functional.conv2d(x.double(), weight, bias, layer.stride, layer.padding,
                                                  layer.dilation, layer.groups)
        else:
            expected = torch.nn.functional.linear(x.double(), weight, bias)
        _check_close(y, expected, layer.values.dtype, f"{kind} after load_state_dict")

    def replay(self, path):
        kind, state, options = self.torch.load(path, weights_only=True)
        print(kind, options, {k: (tuple(v.shape), v.dtype) for k, v in state.items()})
        _replay_run(lambda: self.run(kind, state, options))


# --- target: ONNX files with forged weights, in the main graph and in subgraphs --------------------

class _OnnxBases:
    """Sparse-flavour exports of small models (once per worker) and a writer of variants: the
    sparse node with other weights / attributes, placed in the main graph or inside an If / Loop /
    Scan subgraph, its weights as outer-scope or subgraph initializers or Constant nodes."""

    PLACEMENTS = ("main", "if", "loop", "scan")
    LOCATIONS = ("outer", "subgraph", "constant")

    def __init__(self, workdir, only=("csr", "bsr", "conv")):
        import onnx
        import torch
        from onnx import numpy_helper
        from torch import nn

        import sparse_rt
        import sparse_rt.onnx as srt_onnx

        self.onnx, self.numpy_helper = onnx, numpy_helper
        builds = {"csr": (nn.Sequential(nn.Linear(16, 8)), "csr", (2, 16)),
                  "bsr": (nn.Sequential(nn.Linear(16, 8)), "bsr:2x2", (2, 16)),
                  "conv": (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), "csr", (1, 3, 6, 6))}
        self.bases = {}
        for name in only:
            torch.manual_seed(0)
            dense, fmt, shape = builds[name]
            model = sparse_rt.sparsify(sparse_rt.magnitude_prune(dense, 0.5), min_sparsity=0.0, format=fmt)
            path = os.path.join(workdir, f"base-{name}.onnx")
            srt_onnx.export(model, path, torch.randn(*shape), flavor="sparse")
            proto = onnx.load(path)
            node = next(n for n in proto.graph.node if n.domain == "sparse_rt")
            inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
            weights = [inits[i] for i in node.input[1:]]
            attributes = {a.name: a.i for a in node.attribute}
            self.bases[name] = dict(op_type=node.op_type, weights=weights, attributes=attributes,
                                    input_shape=list(shape), opset=list(proto.opset_import), ir=proto.ir_version)

    def write(self, path, name, weights, attributes, placement, location, input_shape):
        onnx, helper, TP = self.onnx, self.onnx.helper, self.onnx.TensorProto
        base = self.bases[name]
        wnames = ["crow", "col", "values", "bias"]
        tensors = [self.numpy_helper.from_array(w, n) for w, n in zip(weights, wnames)]
        inner_x = "x_t" if placement == "scan" else "X"
        node = helper.make_node(base["op_type"], [inner_x, *wnames], ["Y_inner" if placement != "main" else "Y"],
                                domain="sparse_rt", **attributes)
        outer_inits, inner_inits, inner_nodes = [], [], []
        if placement == "main" or location == "outer":
            outer_inits = tensors
        elif location == "subgraph":
            inner_inits = tensors
        else:
            inner_nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors]
        # Subgraph outputs need a shape (of known rank) for onnxruntime to run a Scan.
        value = lambda n: helper.make_tensor_value_info(n, TP.FLOAT, [None] * len(input_shape))
        x_info = helper.make_tensor_value_info("X", TP.FLOAT, input_shape)
        if placement == "main":
            nodes = [node]
        else:
            def body(inputs, outputs, extra=()):
                return helper.make_graph([*extra, *inner_nodes, node], f"body_{placement}", inputs, outputs,
                                         initializer=inner_inits)

            const = lambda n, v, t: helper.make_node("Constant", [], [n], value=helper.make_tensor(n, t, [], [v]))
            axes = helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TP.INT64, [1], [0]))
            if placement == "if":
                branch = body([], [value("Y_inner")])
                nodes = [const("cond", True, TP.BOOL),
                         helper.make_node("If", ["cond"], ["Y"], then_branch=branch, else_branch=branch)]
            elif placement == "loop":
                cond_out = helper.make_node("Identity", ["cond_in"], ["cond_out"])
                graph = body([helper.make_tensor_value_info("i", TP.INT64, []),
                              helper.make_tensor_value_info("cond_in", TP.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", TP.BOOL, []), value("Y_inner")], [cond_out])
                nodes = [const("trips", 1, TP.INT64), const("cond", True, TP.BOOL),
                         helper.make_node("Loop", ["trips", "cond"], ["Y_stack"], body=graph), axes,
                         helper.make_node("Squeeze", ["Y_stack", "axes"], ["Y"])]
            else:
                graph = body([value("x_t")], [value("Y_inner")])
                nodes = [axes, helper.make_node("Unsqueeze", ["X", "axes"], ["X_seq"]),
                         helper.make_node("Scan", ["X_seq"], ["Y_seq"], body=graph, num_scan_inputs=1),
                         helper.make_node("Squeeze", ["Y_seq", "axes"], ["Y"])]
        graph = helper.make_graph(nodes, "fuzz", [x_info], [value("Y")], initializer=outer_inits)
        model = helper.make_model(graph, opset_imports=base["opset"])
        model.ir_version = base["ir"]
        onnx.save(model, path)


class OnnxTarget:
    def __init__(self, workdir):
        if not _has_onnxruntime_extensions():
            raise SystemExit("the onnx target needs onnxruntime, onnxruntime-extensions and onnxscript")
        import numpy as np
        import torch

        import sparse_rt
        import sparse_rt.onnx  # noqa: F401

        self.np, self.torch, self.sparse_rt = np, torch, sparse_rt
        self.bases = _OnnxBases(workdir)
        self.path = os.path.join(workdir, "onnx.input")

    def _forge(self, name, draw):
        np, st = self.np, draw.st
        base = self.bases.bases[name]
        crow, col, values, bias = (w.copy() for w in base["weights"])
        attributes, shape = dict(base["attributes"]), list(base["input_shape"])
        kind = draw(st.sampled_from(["none", "none", "col", "crow", "values_length", "fp16", "int64_indices",
                                     "tall_blocks", "attribute", "input_width", "big_kernel"]))
        if kind == "col" and col.size:
            col[draw(st.integers(0, col.size - 1))] = draw(st.sampled_from([-1, 16, 1000, 2**31 - 1, -2**31]))
        elif kind == "crow":
            crow[draw(st.integers(0, crow.size - 1))] = draw(st.sampled_from([-1, 0, 1, col.size + 1, 2**31 - 1]))
        elif kind == "values_length":
            values = values[:-1] if draw(st.booleans()) else np.concatenate([values, values[:1]])
        elif kind == "fp16":
            values, bias = values.astype(np.float16), bias.astype(np.float16)
        elif kind == "int64_indices":
            crow, col = crow.astype(np.int64), col.astype(np.int64)
        elif kind == "tall_blocks" and name == "bsr":
            height = draw(st.sampled_from([65, 128, 4096]))
            values = np.ones((col.size, height, values.shape[2]), np.float32)
            bias = np.zeros((crow.size - 1) * height, np.float32)
        elif kind == "attribute":
            key = draw(st.sampled_from(sorted(attributes)))
            attributes[key] = draw(st.sampled_from([-1, 0, 2, 17, 2**19, 2**31 - 1, 2**31, 2**62]))
        elif kind == "input_width":
            shape[-1 if name != "conv" else 1] = draw(st.sampled_from([1, 15, 17, 64]))
        elif kind == "big_kernel" and name == "conv":
            k = draw(st.sampled_from([7, 9, 64]))
            attributes.update(kernel_h=k, kernel_w=k)
            cols = attributes["in_channels"] * k * k
            per_row = [sorted(set(draw(st.lists(st.integers(0, cols - 1), max_size=3)))) for _ in range(crow.size - 1)]
            crow = np.cumsum([0] + [len(r) for r in per_row]).astype(np.int32)
            col = np.array([c for r in per_row for c in r], np.int32)
            values = np.ones(col.size, np.float32)
        return [crow, col, values, bias], attributes, shape

    def case(self, draw):
        st = draw.st
        name = draw(st.sampled_from(sorted(self.bases.bases)))
        weights, attributes, shape = self._forge(name, draw)
        placement = draw(st.sampled_from(_OnnxBases.PLACEMENTS))
        location = draw(st.sampled_from(_OnnxBases.LOCATIONS))
        self.bases.write(self.path, name, weights, attributes, placement, location, shape)
        return self.run(self.path, draw(st.integers(0, 2**31)))

    documented = staticmethod(_onnx_session_error)

    def run(self, path, seed):
        import onnx
        from onnx import numpy_helper

        from sparse_rt.onnx.ops_table import OPS

        np, torch = self.np, self.torch
        sess = self.sparse_rt.onnx.session(path, intra_op_num_threads=1)
        # Accepted: the file's weights were valid, so the reference of those weights must agree.
        proto = onnx.load(path)
        x_info = sess.get_inputs()[0]
        x = np.random.default_rng(seed).standard_normal(x_info.shape).astype(np.float32)
        y, = sess.run(None, {x_info.name: x})
        node = next(n for g in _graphs(proto.graph) for n in g.node if n.domain == "sparse_rt")
        tensors = {t.name: numpy_helper.to_array(t) for g in _graphs(proto.graph) for t in g.initializer}
        tensors.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for g in _graphs(proto.graph)
                        for n in g.node if n.op_type == "Constant" and n.attribute[0].name == "value"})
        spec = OPS[node.op_type]
        weights = [torch.from_numpy(tensors[i].copy()) for i in node.input[1:]]
        attributes = {a.name: a.i for a in node.attribute}
        try:
            expected = getattr(self.sparse_rt.ops.reference, spec.torch_op)(
                torch.from_numpy(x), *weights, *spec.torch_arguments(attributes), compute_dtype=torch.float64)
        except Exception as e:  # noqa: BLE001
            raise WrongResult(f"{node.op_type}: session accepted weights the reference refuses: "
                              f"{type(e).__name__}: {str(e)[:120]}") from None
        _check_close(torch.from_numpy(y), expected.double(), torch.float32, f"{node.op_type} in an ONNX session")

    def replay(self, path):
        _replay_run(lambda: self.run(path, 0))


def _graphs(graph):
    """`graph` and its subgraphs (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.g.node or a.g.initializer:
                yield from _graphs(a.g)


# --- target: files changed during and after a load, non-regular files ------------------------------

class FilesTarget:
    SPECIALS = ("fifo", "directory", "dev_zero", "dev_null", "symlink_loop", "symlink_to_dev_zero")

    def __init__(self, workdir):
        import torch
        from torch import nn

        import sparse_rt
        from sparse_rt import ingest
        from sparse_rt.io import SrtError

        self.torch, self.sparse_rt, self.ingest, self.SrtError = torch, sparse_rt, ingest, SrtError
        self.workdir, self.path = workdir, os.path.join(workdir, "files.input")
        self.live = os.path.join(workdir, "files-live.srt")  # the file loaded and changed
        self.x = torch.randn(2, 3, 8, 8)
        # Two files of the same architecture (other sparsity and format) and one of another.
        variants = [(_pruned(0), "csr"), (_pruned(1), "bsr:2x2"),
                    (nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), "csr")]
        self.files, self.references = [], []
        for i, (net, fmt) in enumerate(variants):
            model = sparse_rt.sparsify(net, format=fmt, min_sparsity=0.0)
            p = os.path.join(workdir, f"files-{i}.srt")
            model.save(p)
            self.files.append(open(p, "rb").read())
            with torch.inference_mode():
                self.references.append(model(self.x) if i < 2 else None)
        self.special_dir = os.path.join(workdir, "specials")

    def _special(self, kind):
        """A fresh non-regular path of `kind`."""
        shutil.rmtree(self.special_dir, ignore_errors=True)
        os.makedirs(self.special_dir)
        path = os.path.join(self.special_dir, "model.srt")
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            os.mkdir(path)
        elif kind in ("dev_zero", "dev_null"):
            return "/dev/zero" if kind == "dev_zero" else "/dev/null"
        elif kind == "symlink_loop":
            os.symlink(path + ".b", path)
            os.symlink(path, path + ".b")
        else:
            os.symlink("/dev/zero", path)
        return path

    def _change(self, kind, other):
        """Changes the file at self.live: truncate, rewrite in place, replace, or remove it."""
        if kind == "truncate":
            os.truncate(self.live, len(self.files[0]) // 3)
        elif kind == "rewrite":
            with open(self.live, "r+b") as f:
                f.write(other)
                f.truncate()
        elif kind == "replace":
            tmp = self.live + ".tmp"
            with open(tmp, "wb") as f:
                f.write(other)
            os.replace(tmp, self.live)
        elif kind == "flip":
            with open(self.live, "r+b") as f:
                f.seek(len(other) // 2)
                f.write(b"\xff" * 64)
        else:
            os.remove(self.live)

    def case(self, draw):
        st = draw.st
        mode = draw(st.sampled_from(["during", "after", "after", "special"]))
        spec = {"mode": mode}
        if mode == "special":
            spec.update(kind=draw(st.sampled_from(self.SPECIALS)), reader=draw(st.sampled_from(["load", "checkpoint"])))
        else:
            spec.update(first=draw(st.integers(0, 1)), other=draw(st.integers(0, 2)),
                        change=draw(st.sampled_from(["truncate", "rewrite", "replace", "flip", "remove"])),
                        delay_us=draw(st.sampled_from([0, 10, 100, 300, 1000, 3000])))
        with open(self.path, "w") as f:  # the spec is the input (the files are rebuilt from it)
            json.dump(spec, f)
        return self.run(spec)

    def documented(self, e):
        # A path open() itself refuses raises the OSError it gives: a symlink loop, no permission,
        # or a file the change removed before the load opened it.
        opened = isinstance(e, FileNotFoundError) or (isinstance(e, OSError) and e.errno in (errno.ELOOP, errno.EACCES))
        return opened or isinstance(e, (self.SrtError, self.ingest.IngestError))

    def run(self, spec):
        torch = self.torch
        if spec["mode"] == "special":
            path = self._special(spec["kind"])
            if spec["reader"] == "load":
                self.sparse_rt.load(path, arch=_tiny_net())
            else:
                self.ingest.read_checkpoint(path)
            return
        with open(self.live, "wb") as f:
            f.write(self.files[spec["first"]])
        other = self.files[spec["other"]]
        if spec["mode"] == "during":
            import threading

            def writer():
                time.sleep(spec["delay_us"] / 1e6)
                self._change(spec["change"], other)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                model = self.sparse_rt.load(self.live, arch=_tiny_net())
            finally:
                thread.join()
            with torch.inference_mode():
                y = model(self.x)
            candidates = [r for r in (self.references[spec["first"]], self.references[spec["other"]]) if r is not None]
            if not any(tuple(y.shape) == tuple(r.shape) and torch.allclose(y, r, atol=1e-4) for r in candidates):
                raise WrongResult("a load racing a change of its file gave a model of neither file")
        else:
            model = self.sparse_rt.load(self.live, arch=_tiny_net())
            self._change(spec["change"], other)
            with torch.inference_mode():
                y = model(self.x)
            if not torch.allclose(y, self.references[spec["first"]], atol=1e-4):
                raise WrongResult(f"the loaded model changed when its file was changed ({spec['change']})")

    def replay(self, path):
        spec = json.load(open(path))
        print(spec)
        _replay_run(lambda: self.run(spec))


# --- target: the command line ----------------------------------------------------------------------

class CliTarget:
    def __init__(self, workdir):
        import torch

        import sparse_rt
        from sparse_rt import cli

        self.main, self.workdir, self.path = cli.main, workdir, os.path.join(workdir, "cli.input")
        self.files = FilesTarget.__new__(FilesTarget)  # for its non-regular paths
        self.files.special_dir = os.path.join(workdir, "cli-specials")
        torch.manual_seed(0)
        net = sparse_rt.magnitude_prune(_tiny_net().eval(), 0.7)
        self.srt = os.path.join(workdir, "cli-model.srt")
        sparse_rt.sparsify(net, format="csr", min_sparsity=0.0).save(self.srt)
        self.ckpt = os.path.join(workdir, "cli-ckpt.pt")
        torch.save({"state_dict": net.state_dict()}, self.ckpt)
        data = open(self.srt, "rb").read()
        self.damaged = os.path.join(workdir, "cli-damaged.srt")
        with open(self.damaged, "wb") as f:
            f.write(data[:len(data) // 2])

    def _path(self, draw):
        st = draw.st
        kind = draw(st.sampled_from(["srt", "ckpt", "damaged", "missing", "empty", "long", "nul", "special"]))
        if kind == "special":
            return self.files._special(draw(st.sampled_from(FilesTarget.SPECIALS)))
        return {"srt": self.srt, "ckpt": self.ckpt, "damaged": self.damaged,
                "missing": os.path.join(self.workdir, "absent.srt"), "empty": "", "long": "x" * 5000,
                "nul": "a\x00b"}[kind]

    def _number(self, draw):
        return draw(draw.st.sampled_from(["0", "-1", "1e400", "nan", "inf", "-inf", "1" * 5000, "0x10", "2**31",
                                          "4294967296", "0.5", "abc", ""]))

    def _argv(self, draw):
        st = draw.st
        command = draw(st.sampled_from(["inspect", "inspect", "convert", "convert", "export", "bench"]))
        out = draw(st.sampled_from([os.path.join(self.workdir, "cli-out.srt"), self.workdir, "/proc/version",
                                    "/dev/null", os.path.join(self.workdir, "no", "such", "dir", "o.srt")]))
        if command == "inspect":
            return ["inspect", self._path(draw)]
        if command == "convert":
            argv = ["convert", draw(st.sampled_from([self.ckpt, self._path(draw)])), "-o", out,
                    "--arch", draw(st.sampled_from(["cifar_resnet", "resnet18", "nope", "os:system", "", "1" * 300]))]
            for option, values in (("--arch-kwargs", ["depth=2147483648", "depth=1e400", "depth=nan", "=", "a=b=c",
                                                      "depth=" + "9" * 5000, "depth=8,depth=20"]),
                                   ("--format", ["bsr:0x0", "bsr:99999999999x1", "bsr:-1x2", "bsr:2x", "csr", "x"]),
                                   ("--min-sparsity", None), ("--cs-s0", None),
                                   ("--input-shape", ["0,0,0", "-1,2,3", "99999999,99999,9999", "3", "a,b,c"]),
                                   ("--rename", ["=", "a=", "a=b,a=c", "module.=" + "x" * 1000])):
                if draw(st.booleans()):
                    argv += [option, draw(st.sampled_from(values)) if values else self._number(draw)]
            return argv
        if command == "export":
            return ["export", draw(st.sampled_from([self.srt, self._path(draw)])), "-o", out.replace(".srt", ".onnx"),
                    "--flavor", draw(st.sampled_from(["portable", "sparse", "dense", ""])),
                    "--opset", draw(st.sampled_from(["-1", "0", "1", "99", "1" * 30, "x"]))]
        return ["bench", draw(st.sampled_from([self.srt, self._path(draw)])), "--batch",
                draw(st.sampled_from(["0", "-1", "1e9", "", ",", "99999999999"])), "--time", self._number(draw),
                "--warmup", draw(st.sampled_from(["-1", "nan", "inf", "0"])), "--threads",
                draw(st.sampled_from(["-1", "0", "99999"])), "--no-progress"]

    def case(self, draw):
        argv = self._argv(draw)
        with open(self.path, "w") as f:
            json.dump(argv, f)
        return self.run(argv)

    def documented(self, e):
        return False  # every error must leave through main as an exit status

    def run(self, argv):
        import contextlib
        import warnings

        stderr = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stderr(stderr), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                status, parser_exit = self.main(argv) or 0, False
            except SystemExit as e:  # argparse: usage lines, then the error line
                status, parser_exit = e.code, True
        lines = stderr.getvalue().strip().splitlines()
        if status == 0:
            return
        if status != 2 or not lines or not lines[-1].startswith("sparse-rt") or "Traceback" in stderr.getvalue() \
                or (not parser_exit and len(lines) != 1):
            raise CliContractError(f"{argv[0]}: exit {status} with stderr {lines[-3:]!r}"[:300])

    def replay(self, path):
        argv = json.load(open(path))
        print(argv)
        _replay_run(lambda: self.run(argv))


class CliContractError(Exception):
    """The CLI broke its contract (exit 0, or 2 with one error line): an "unexpected" outcome."""


CLASSES = {"srt": SrtTarget, "checkpoint": CheckpointTarget, "ops": OpsTarget, "geometry": GeometryTarget,
           "layer": LayerTarget, "onnx": OnnxTarget, "files": FilesTarget, "cli": CliTarget}
OUTCOMES = ("ok", "rejected", "unexpected", "wrong")


# --- worker: runs one target in-process under hypothesis -------------------------------------------

def _cap_memory(memory_gib):
    """A case asking for unbounded memory fails (MemoryError, an allocator's error) instead of
    taking the machine down; replays run under the same cap, so they fail as the case did."""
    limit = int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker(target_name, cases, seed, workdir, memory_gib):

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    _cap_memory(memory_gib)
    target = CLASSES[target_name](workdir)
    documented = getattr(target, "documented", None) or (lambda e: isinstance(e, target.expected))
    counts = dict.fromkeys(OUTCOMES, 0)
    examples = {}
    findings = os.path.join(workdir, "findings")
    os.makedirs(findings, exist_ok=True)

    def keep(key):
        """Keeps the input of a finding's first occurrence (for --replay), and beside it what was
        raised, with its traceback."""
        examples[key] = examples.get(key, 0) + 1
        kept = os.path.join(findings, f"{target_name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.case")
        inputs = _inputs(target_name, workdir)
        if inputs and not os.path.exists(kept):
            shutil.copyfile(inputs[0], kept + _suffix(inputs[0]))
            with open(kept + ".txt", "w") as f:
                f.write(key + "\n\n" + traceback.format_exc())
    progress = os.path.join(workdir, f"{target_name}.progress")
    with open(progress, "w") as f:
        json.dump(counts, f)

    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(st.data())
    def run(data):
        if sum(counts.values()) >= cases:
            return
        with open(progress, "w") as f:  # the parent reads it after a crash
            json.dump(counts, f)
        try:
            target.case(_Draw(data))
            outcome = "ok"
        except WrongResult as e:
            outcome = "wrong"
            keep(f"wrong: {str(e)[:200]}")
        except Exception as e:  # noqa: BLE001  (any other exception type is a finding)
            if documented(e):
                outcome = "rejected"
            else:
                outcome = "unexpected"
                keep(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        counts[outcome] += 1

    run()
    print(json.dumps({"counts": counts, "examples": examples}), flush=True)


# --- parent: runs the workers, detects crashes -----------------------------------------------------

def _spawn(target, cases, seed, workdir, memory_gib):
    for stale in [os.path.join(workdir, f"{target}.progress"), *_inputs(target, workdir)]:
        if os.path.exists(stale):
            os.remove(stale)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", target, "--cases", str(cases),
           "--seed", str(seed), "--workdir", workdir, "--memory-gib", str(memory_gib)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Output goes to files: a full pipe would block the worker.
    out, err = (open(os.path.join(workdir, f"{target}.{n}"), "w+") for n in ("stdout", "stderr"))
    # A session of its own: a hung worker is killed with everything it started.
    return subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, start_new_session=True), out, err


def fuzz(targets, total, seed, workdir, jobs, memory_gib=4.0, case_timeout=10.0):
    os.makedirs(os.path.join(workdir, "crashes"), exist_ok=True)
    per = {t: total // len(targets) + (i < total % len(targets)) for i, t in enumerate(targets)}
    state = {t: {"cases": 0, "ok": 0, "rejected": 0, "unexpected": 0, "wrong": 0, "crashes": 0, "hangs": 0,
                 "examples": {}, "crash_inputs": [], "seconds": 0.0, "restarts": 0} for t in targets}
    queue, running = list(targets), {}
    while queue or running:
        while queue and len(running) < jobs:
            t = queue.pop(0)
            remaining = per[t] - state[t]["cases"]
            wseed = seed * 1000 + state[t]["restarts"]
            running[t] = (*_spawn(t, remaining, wseed, workdir, memory_gib), time.time())
        time.sleep(0.2)
        for t, (proc, out_file, err_file, started) in list(running.items()):
            hung = proc.poll() is None and _case_seconds(t, workdir) > case_timeout
            if hung:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            elif proc.poll() is None:
                continue
            out, err = (f.seek(0) or f.read() for f in (out_file, err_file))
            out_file.close(), err_file.close()
            del running[t]
            s = state[t]
            s["seconds"] += time.time() - started
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines and not hung:
                result = json.loads(lines[-1])
                for k, v in result["counts"].items():
                    s[k] += v
                    s["cases"] += v
                for k, v in result["examples"].items():
                    s["examples"][k] = s["examples"].get(k, 0) + v
                if not sum(result["counts"].values()):
                    raise SystemExit(f"fuzz worker {t} ran no cases:\n{err[-3000:]}")
            else:
                progress = os.path.join(workdir, f"{t}.progress")
                inputs = _inputs(t, workdir)
                if not os.path.exists(progress) or not inputs:
                    raise SystemExit(f"fuzz worker {t} failed to start (exit {proc.returncode}):\n{err[-3000:]}")
                counts = json.load(open(progress))  # outcomes of the cases before the crash / hang
                for k, v in counts.items():
                    s[k] += v
                    s["cases"] += v
                what = "hang" if hung else "crash"
                s[what + "es" if what == "crash" else "hangs"] += 1
                s["cases"] += 1
                kept = os.path.join(workdir, "crashes", f"{t}-{s['crashes'] + s['hangs']}.case{_suffix(inputs[0])}")
                shutil.copyfile(inputs[0], kept)
                s["crash_inputs"].append({"input": kept, "outcome": what, "exit": proc.returncode,
                                          "stderr": err[-2000:]})
                print(f"[{t}] {what.upper()} (exit {proc.returncode}) after {sum(counts.values())} cases; "
                      f"input kept at {kept}", flush=True)
            s["restarts"] += 1
            if s["cases"] < per[t]:
                queue.append(t)
            else:
                print(f"[{t}] {s['cases']} cases in {s['seconds']:.0f}s: {s['ok']} ok, {s['rejected']} rejected, "
                      f"{s['unexpected']} unexpected, {s['wrong']} wrong, {s['crashes']} crashes, {s['hangs']} hangs",
                      flush=True)
    return state


def _case_seconds(target, workdir):
    """How long the worker's current case has run (the progress file is stamped before each case;
    0 while the worker is still setting up)."""
    try:
        return time.time() - os.path.getmtime(os.path.join(workdir, f"{target}.progress"))
    except FileNotFoundError:
        return 0.0


def _inputs(target, workdir):
    """The input file a worker of `target` wrote last (a list of zero or one path)."""
    names = {"checkpoint": ["checkpoint.input.pt", "checkpoint.input.safetensors"]}.get(target, [f"{target}.input"])
    return [p for p in (os.path.join(workdir, n) for n in names) if os.path.exists(p)]


def _suffix(path):
    return ".safetensors" if path.endswith(".safetensors") else ""


def _report(state, args, started):
    import torch

    return {
        "command": "python tools/fuzz.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "seed": args.seed,
        "memory_gib": args.memory_gib,
        "case_timeout": args.case_timeout,
        "seconds": round(time.time() - started, 1),
        "total_cases": sum(s["cases"] for s in state.values()),
        "total_crashes": sum(s["crashes"] for s in state.values()),
        "total_hangs": sum(s["hangs"] for s in state.values()),
        "total_unexpected": sum(s["unexpected"] for s in state.values()),
        "total_wrong": sum(s["wrong"] for s in state.values()),
        "targets": state,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=3000, help="total cases, split evenly over the targets")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {TARGETS}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once (one process each)")
    p.add_argument("--workdir", default="build/fuzz", help="scratch files, crashes/ and findings/")
    p.add_argument("--memory-gib", type=float, default=4.0, help="address-space cap of a worker (RLIMIT_AS)")
    p.add_argument("--case-timeout", type=float, default=10.0, help="seconds after which a case is a hang")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--replay", help="run one kept input (WORKDIR/crashes/TARGET-N.case) in this process")
    p.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    if args.worker:
        return worker(args.worker, args.cases, args.seed, args.workdir, args.memory_gib)
    if args.replay:
        target = os.path.basename(args.replay).split("-")[0]
        os.makedirs(args.workdir, exist_ok=True)
        _cap_memory(args.memory_gib)
        return CLASSES[target](args.workdir).replay(args.replay)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        p.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    os.makedirs(args.workdir, exist_ok=True)
    started = time.time()
    state = fuzz(targets, args.cases, args.seed, args.workdir, args.jobs, args.memory_gib, args.case_timeout)
    report = _report(state, args, started)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{report['total_cases']} cases, {report['total_crashes']} crashes, {report['total_hangs']} hangs, "
          f"{report['total_unexpected']} unexpected exceptions, {report['total_wrong']} wrong results "
          f"({report['seconds']:.0f}s)")
    failures = report["total_crashes"] + report["total_hangs"] + report["total_unexpected"] + report["total_wrong"]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

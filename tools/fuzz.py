"""Fuzzer of sparse_rt's untrusted-input surfaces (hypothesis-driven).

    python tools/fuzz.py --cases 100000                 # all targets, cases split evenly
    python tools/fuzz.py --cases 5000 --targets ops     # one target
    python tools/fuzz.py --replay build/fuzz/crashes/ops-3.case

Targets:
  srt         sparse_rt.load on mutated valid .srt files: truncation, bit flips, byte spans, header
              length, random bytes, and JSON / index-array edits whose sha256 are recomputed (a
              hostile file passes the integrity check); a file that loads must then run.
  checkpoint  sparse_rt.ingest.read_checkpoint on mutated torch.save files (zip and legacy),
              their pickles rewritten inside a valid zip, safetensors files, and random bytes.
  ops         torch.ops.sparse_rt.* with random tensors (dtype, shape, values) and integer
              arguments, full index checks on; a call that succeeds must match the reference.

Each target runs in a worker subprocess, so a crash (segfault, abort) is detected: the parent
counts it, keeps the input that caused it under WORKDIR/crashes/ and restarts the worker. Every
case ends as ok, rejected (the documented exception type), unexpected (another exception: a bug
in the error handling), wrong (ops: a result that differs from the reference) or crash.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile

TARGETS = ("srt", "checkpoint", "ops")
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
    expected = ()

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
        kind = draw(st.sampled_from(["bytes", "header", "manifest", "indices", "version", "length"]))
        if kind == "bytes":
            return _mutate_bytes(data, draw)
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
        elif kind == "header":
            table = {k: v for k, v in header.items() if k != "__metadata__"}
            for _ in range(draw(st.integers(1, 3))):
                _edit_json(table, draw)
            header = {**table, "__metadata__": header["__metadata__"]}
        else:  # overwrite entries of an index array with chosen int32 values
            names = sorted(k for k in header if k.endswith(("crow_indices", "col_indices")))
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

    def case(self, draw):
        base, arch, x = self.bases[draw(draw.st.integers(0, len(self.bases) - 1))]
        with open(self.path, "wb") as f:
            f.write(self._mutate(base, draw))
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
    expected = ()

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
        objects = [sd, {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3, "best_acc1": 0.5},
                   {**{k.replace("weight", "weight_orig"): v for k, v in sd.items()}, **masks},
                   {"model": sd, "payload": _Payload(self.marker)}]
        self.bases = []
        for i, obj in enumerate(objects):
            for zipped in (True, False):
                buf = io.BytesIO()
                torch.save(obj, buf, _use_new_zipfile_serialization=zipped)
                self.bases.append((buf.getvalue(), ".pt"))
        self.bases.append((safetensors.torch.save(sd), ".safetensors"))

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
        try:
            self.read(self.path)
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

class OpsTarget:
    expected = (RuntimeError,)

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


CLASSES = {"srt": SrtTarget, "checkpoint": CheckpointTarget, "ops": OpsTarget}


# --- worker: runs one target in-process under hypothesis -------------------------------------------

def worker(target_name, cases, seed, workdir):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    target = CLASSES[target_name](workdir)
    counts = {"ok": 0, "rejected": 0, "unexpected": 0, "wrong": 0}
    examples = {}
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
        except target.expected:
            outcome = "rejected"
        except WrongResult as e:
            outcome, examples["wrong"] = "wrong", examples.get("wrong") or str(e)
        except Exception as e:  # noqa: BLE001  (any other exception type is a finding)
            outcome = "unexpected"
            key = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            examples.setdefault(key, 0)
            examples[key] += 1
        counts[outcome] += 1

    run()
    print(json.dumps({"counts": counts, "examples": examples}), flush=True)


# --- parent: runs the workers, detects crashes -----------------------------------------------------

def _spawn(target, cases, seed, workdir):
    for stale in [os.path.join(workdir, f"{target}.progress"), *_inputs(target, workdir)]:
        if os.path.exists(stale):
            os.remove(stale)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", target, "--cases", str(cases),
           "--seed", str(seed), "--workdir", workdir]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Output goes to files: a full pipe would block the worker.
    out, err = (open(os.path.join(workdir, f"{target}.{n}"), "w+") for n in ("stdout", "stderr"))
    return subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env), out, err


def fuzz(targets, total, seed, workdir, jobs):
    os.makedirs(os.path.join(workdir, "crashes"), exist_ok=True)
    per = {t: total // len(targets) + (i < total % len(targets)) for i, t in enumerate(targets)}
    state = {t: {"cases": 0, "ok": 0, "rejected": 0, "unexpected": 0, "wrong": 0, "crashes": 0,
                 "examples": {}, "crash_inputs": [], "seconds": 0.0, "restarts": 0} for t in targets}
    queue, running = list(targets), {}
    while queue or running:
        while queue and len(running) < jobs:
            t = queue.pop(0)
            remaining = per[t] - state[t]["cases"]
            wseed = seed * 1000 + state[t]["restarts"]
            running[t] = (*_spawn(t, remaining, wseed, workdir), time.time())
        time.sleep(0.2)
        for t, (proc, out_file, err_file, started) in list(running.items()):
            if proc.poll() is None:
                continue
            out, err = (f.seek(0) or f.read() for f in (out_file, err_file))
            out_file.close(), err_file.close()
            del running[t]
            s = state[t]
            s["seconds"] += time.time() - started
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if proc.returncode == 0 and lines:
                result = json.loads(lines[-1])
                for k, v in result["counts"].items():
                    s[k] += v
                    s["cases"] += v
                for k, v in result["examples"].items():
                    s["examples"][k] = s["examples"].get(k, 0) + v if isinstance(v, int) else v
                if not result["counts"] or not sum(result["counts"].values()):
                    raise SystemExit(f"fuzz worker {t} ran no cases:\n{err[-3000:]}")
            else:
                progress = os.path.join(workdir, f"{t}.progress")
                inputs = _inputs(t, workdir)
                if not os.path.exists(progress) or not inputs:
                    raise SystemExit(f"fuzz worker {t} failed to start (exit {proc.returncode}):\n{err[-3000:]}")
                counts = json.load(open(progress))  # outcomes of the cases before the crash
                for k, v in counts.items():
                    s[k] += v
                    s["cases"] += v
                s["crashes"] += 1
                s["cases"] += 1
                suffix = ".safetensors" if inputs[0].endswith(".safetensors") else ""
                kept = os.path.join(workdir, "crashes", f"{t}-{s['crashes']}.case{suffix}")
                shutil.copyfile(inputs[0], kept)
                s["crash_inputs"].append({"input": kept, "exit": proc.returncode, "stderr": err[-2000:]})
                print(f"[{t}] CRASH (exit {proc.returncode}) after {sum(counts.values())} cases; input kept at {kept}",
                      flush=True)
            s["restarts"] += 1
            if s["cases"] < per[t]:
                queue.append(t)
            else:
                print(f"[{t}] {s['cases']} cases in {s['seconds']:.0f}s: {s['ok']} ok, {s['rejected']} rejected, "
                      f"{s['unexpected']} unexpected, {s['wrong']} wrong, {s['crashes']} crashes", flush=True)
    return state


def _inputs(target, workdir):
    """The input file a worker of `target` wrote last (a list of zero or one path)."""
    names = {"srt": ["srt.input"], "checkpoint": ["checkpoint.input.pt", "checkpoint.input.safetensors"],
             "ops": ["ops.input"]}
    return [p for p in (os.path.join(workdir, n) for n in names[target]) if os.path.exists(p)]


def _report(state, args, started):
    import torch

    return {
        "command": "python tools/fuzz.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "seed": args.seed,
        "seconds": round(time.time() - started, 1),
        "total_cases": sum(s["cases"] for s in state.values()),
        "total_crashes": sum(s["crashes"] for s in state.values()),
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
    p.add_argument("--workdir", default="build/fuzz", help="scratch files and crashes/")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--replay", help="run one kept input (WORKDIR/crashes/TARGET-N.case) in this process")
    p.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    if args.worker:
        return worker(args.worker, args.cases, args.seed, args.workdir)
    if args.replay:
        target = os.path.basename(args.replay).split("-")[0]
        os.makedirs(args.workdir, exist_ok=True)
        return CLASSES[target](args.workdir).replay(args.replay)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        p.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    os.makedirs(args.workdir, exist_ok=True)
    started = time.time()
    report = _report(fuzz(targets, args.cases, args.seed, args.workdir, args.jobs), args, started)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{report['total_cases']} cases, {report['total_crashes']} crashes, {report['total_unexpected']} "
          f"unexpected exceptions, {report['total_wrong']} wrong results ({report['seconds']:.0f}s)")
    return 1 if report["total_crashes"] or report["total_unexpected"] or report["total_wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())

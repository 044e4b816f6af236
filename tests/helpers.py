"""What the test files share: the device/dtype parametrisation and skip marks, sparse operands with
the ops' tolerance rule, and the small pruned CNN of the ingest/convert/.srt tests.
Test files import it as `from helpers import ...` (pytest puts tests/ on sys.path)."""

import copy
import hashlib
import json

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt.formats import BSR, CSR
from sparse_rt.io import srt

# --------------------------------------------------------------------------- devices and dtypes

requires_compiled_ops = pytest.mark.skipif(
    not sparse_rt.ops.HAS_COMPILED_OPS,
    reason=f"sparse_rt._C is not built ({sparse_rt.ops._library.LOAD_ERROR})",
)


def _cuda_missing():
    """Why the CUDA kernels cannot run here, or None."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not sparse_rt.ops.HAS_COMPILED_OPS:
        return f"sparse_rt._C is not built ({sparse_rt.ops._library.LOAD_ERROR})"
    for op in ("csr_linear", "bsr_linear", "csr_conv2d"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_rt::{op}", "CUDA"):
            return f"torch.ops.sparse_rt.{op} has no CUDA kernel (built without CUDA?)"
    return None


CUDA_MISSING = _cuda_missing()
# Every CUDA test carries the `cuda` marker (`pytest -m cuda` runs them all: `make gpu-check`)
# and skips with the reason above where the CUDA kernels cannot run.
CUDA_MARKS = [pytest.mark.cuda,
              pytest.mark.skipif(CUDA_MISSING is not None, reason=f"needs CUDA: {CUDA_MISSING}")]


def requires_cuda(test):
    """CUDA_MARKS as a decorator."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


# One device list for the whole suite: every device-parametrised test has a CUDA case.
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]
# csr_linear on CUDA has two kernels for fp16/bf16 from batch 8 (csrc/kernels/cuda/csr_spmm.cu);
# "cuda-tensor_cores" forces the tensor-core one where it applies (the `csr_device` fixture).
CSR_DEVICES = DEVICES + [pytest.param("cuda-tensor_cores", marks=CUDA_MARKS)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# --------------------------------------------------------------------------- sparse operands

# Max error relative to the largest reference magnitude, per output dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_mask(rows, cols, density, seed, empty_rows=(), dense_rows=()):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < density
    for r in empty_rows:
        mask[r] = False
    for r in dense_rows:
        mask[r] = True
    return mask


def random_weight(rows, cols, density, seed, dtype=torch.float32, **rows_kw):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    return w * random_mask(rows, cols, density, seed, **rows_kw)


def random_csr(rows, cols, density, seed, dtype=torch.float32, device="cpu", **rows_kw):
    w = random_weight(rows, cols, density, seed, dtype, **rows_kw)
    return to_device(CSR.from_dense(w), device)


def random_bsr(rows, cols, blocksize, density, seed, dtype=torch.float32, device="cpu", **block_rows_kw):
    """`block_rows_kw` (empty_rows, dense_rows) counts in block rows."""
    bh, bw = blocksize
    block_mask = random_mask(rows // bh, cols // bw, density, seed, **block_rows_kw)
    mask = block_mask.repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return to_device(BSR.from_dense(w * mask, mask, blocksize), device)


def to_device(m, device):
    m.crow_indices, m.col_indices, m.values = (t.to(device) for t in (m.crow_indices, m.col_indices, m.values))
    return m


def randn(*shape, dtype=torch.float32, device="cpu", seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype=dtype, device=device)


def assert_close(actual, expected, dtype):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == dtype
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    err = (actual.double() - expected.double()).abs().max().item() / scale if expected.numel() else 0.0
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g} > {TOLERANCE[dtype]:.1g} for {dtype}"


def rel_err(actual, expected):
    """Largest absolute difference relative to the largest expected magnitude."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()

# --------------------------------------------------------------------------- a small pruned model

PRUNABLE = ["features.0.weight", "features.4.weight", "classifier.0.weight", "classifier.3.weight"]


class Net(nn.Module):
    """Tiny CNN + MLP: Conv2d, BatchNorm2d, Linear (+ a BatchNorm1d, which rigl-torch counts)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# An input batch for Net.
X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def make_model(seed=0):
    """A Net in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    m = Net()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.num_batches_tracked.fill_(7)
    return m.eval()


def random_masks(model, density=0.4, seed=1, names=PRUNABLE):
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    return {n: torch.rand(sd[n].shape, generator=g) < density for n in names}


def masked_copy(model, masks, scale=None):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n in masks:
                p.mul_(masks[n].to(p.dtype))
                if scale is not None:
                    p.mul_(scale)
    return m.eval()


def sgd_state(model):
    """An SGD-with-momentum optimizer state after one step, as training checkpoints hold."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    model(X).sum().backward()
    opt.step()
    model.eval()
    return opt.state_dict()


# --------------------------------------------------------------------------------- .srt forgery

def forge_srt(src, dst, edit):
    """Copies a .srt file through edit(header, manifest, body) and recomputes both sha256, as a
    forger would: the integrity check passes, so validation has to catch the damage."""
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])
    manifest = json.loads(header.pop("__metadata__")[srt.MANIFEST_KEY])
    edit(header, manifest, body)
    manifest["tensors_sha256"] = hashlib.sha256(body).hexdigest()
    manifest["header_sha256"] = srt.header_digest(header, manifest)
    header["__metadata__"] = {srt.MANIFEST_KEY: json.dumps(manifest)}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    dst.write_bytes(len(head).to_bytes(8, "little") + head + bytes(body))


def compiler_with_libstdcxx(tmp_path, version):
    """A stand-in g++ whose headers' libstdc++ is libstdc++.so.6.0.<version> (it answers
    -print-file-name, all the check asks of it)."""
    library = tmp_path / "lib64" / f"libstdc++.so.6.0.{version}"
    library.parent.mkdir(parents=True, exist_ok=True)
    library.write_bytes(b"")
    (tmp_path / "lib64" / "libstdc++.so.6").symlink_to(library.name)
    cxx = tmp_path / "bin" / "g++"
    cxx.parent.mkdir(parents=True, exist_ok=True)
    cxx.write_text(f"#!/bin/sh\necho {tmp_path / 'lib64' / 'libstdc++.so.6'}\n")
    cxx.chmod(0o755)
    return str(cxx), library


"""Tests for sparse_rt.ingest: every checkpoint form, written with the training
codebases' own key names and file layouts, read back with auto detection."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch
from helpers import (
    PRUNABLE,
    Net,
    X,
    make_model,
    masked_copy,
    random_masks,
    rel_err,
    sgd_state,
)
from torch import nn

from sparse_rt.ingest import (
    FORMS,
    CheckpointMismatchError,
    FormNotPresentError,
    InvalidOptionError,
    MaskShapeError,
    MaskValueError,
    MissingMasksError,
    ModelRequiredError,
    UnknownLayoutError,
    UnsafeCheckpointError,
    UnsafeLoadWarning,
    UnsupportedTensorError,
    match_masks,
    match_state_dict,
    read_checkpoint,
    rigl_torch_weight_names,
)


def check_outputs(ckpt, ref_model, expected_masks):
    fresh = make_model(seed=123)  # different values everywhere
    sd = match_state_dict(ckpt, fresh)
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    with torch.no_grad():
        out, ref = fresh(X), ref_model(X)
    assert rel_err(out, ref) <= 1e-5
    assert set(ckpt.masks) == set(expected_masks)
    for k, m in expected_masks.items():
        assert ckpt.masks[k].dtype == torch.bool
        assert torch.equal(ckpt.masks[k], m.bool()), k
    assert len(ckpt.source_sha256) == 64
    assert ckpt.form in FORMS
    return fresh


# --------------------------------------------------------------------------- forms


def test_dense_zeros_dataparallel_wrapper(tmp_path):
    """FreeTickets / Sup-tickets: {'epoch', 'state_dict', 'optimizer'}; DataParallel keys."""
    model = make_model()
    masks = random_masks(model)
    ref = masked_copy(model, masks)
    opt = sgd_state(make_model(9))
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    p = tmp_path / "model.pth"
    torch.save({"epoch": 12, "state_dict": sd, "optimizer": opt}, p)
    ck = read_checkpoint(p)
    assert ck.form == "dense_zeros" and ck.masks_inferred
    assert any("module." in n for n in ck.notes)
    assert ck.meta.get("epoch") == 12
    assert all(not k.startswith("module.") for k in ck.state_dict)
    check_outputs(ck, ref, masks)


def test_dense_zeros_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = make_model()
    masks = random_masks(model)
    ref = masked_copy(model, masks)
    p = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(p))
    ck = read_checkpoint(p)
    assert ck.form == "dense_zeros"
    check_outputs(ck, ref, masks)
    import hashlib

    assert ck.source_sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_torch_prune(tmp_path):
    import torch.nn.utils.prune as prune

    model = make_model()
    masks = random_masks(model)
    bias_mask = torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.5
    ref = masked_copy(model, {**masks, "features.0.bias": bias_mask})
    pruned = copy.deepcopy(model)
    mods = dict(pruned.named_modules())
    for n, m in masks.items():
        prune.custom_from_mask(mods[n.rsplit(".", 1)[0]], "weight", m.float())
    prune.custom_from_mask(mods["features.0"], "bias", bias_mask.float())
    keys = pruned.state_dict().keys()
    assert "features.0.weight_orig" in keys and "features.0.weight_mask" in keys and "features.0.bias_orig" in keys
    p = tmp_path / "pruned.pt"
    torch.save(pruned.state_dict(), p)
    ck = read_checkpoint(p)
    assert ck.form == "torch_prune"
    check_outputs(ck, ref, {**masks, "features.0.bias": bias_mask})


def test_shrinkbench(tmp_path):
    """shrinkbench LinearMasked/Conv2dMasked buffers in checkpoints/checkpoint-N.pt."""
    model = make_model()
    masks = random_masks(model)
    bias_mask = torch.rand(32, generator=torch.Generator().manual_seed(4)) < 0.5
    ref = masked_copy(model, {**masks, "classifier.0.bias": bias_mask})
    sd = {}
    for k, v in model.state_dict().items():
        sd[k] = v.clone()
        if k in masks:
            sd[k] = v * masks[k]  # LinearMasked multiplies the weight in place at wrap time
            sd[k[: -len("weight")] + "weight_mask"] = masks[k].float()
    sd["classifier.0.bias_mask"] = bias_mask.float()
    opt = sgd_state(make_model(9))
    (tmp_path / "checkpoints").mkdir()
    p = tmp_path / "checkpoints" / "checkpoint-10.pt"
    torch.save({"model_state_dict": sd, "optim_state_dict": opt}, p)
    ck = read_checkpoint(p)
    assert ck.form == "shrinkbench"
    check_outputs(ck, ref, {**masks, "classifier.0.bias": bias_mask})


def _openlth_masks(model):
    # open_lth prunable_layer_names: <module>.weight of every Conv2d and Linear
    return random_masks(model, names=PRUNABLE)


def test_open_lth_folder(tmp_path):
    model = make_model()
    masks = _openlth_masks(model)
    ref = masked_copy(model, masks)
    run = tmp_path / "lottery_abc" / "replicate_1"
    for level in (0, 1):
        d = run / f"level_{level}" / "main"
        d.mkdir(parents=True)
        lm = {k: torch.ones_like(v) for k, v in masks.items()} if level == 0 else masks
        torch.save({k: v.int() for k, v in lm.items()}, d / "mask.pth")  # Mask.save: .cpu().int()
        # rewound start (different weights) and end-of-training model; the end model's
        # pruned weights are NOT zero (the optimizer stepped after the last masking)
        torch.save(make_model(77).state_dict(), d / "model_ep0_it0.pth")
        torch.save(model.state_dict(), d / "model_ep2_it0.pth")
    lvl1 = run / "level_1" / "main"
    ck = read_checkpoint(lvl1)
    assert ck.form == "open_lth"
    assert [os.path.basename(f) for f in ck.files] == ["model_ep2_it0.pth", "mask.pth"]
    check_outputs(ck, ref, masks)
    # the model file itself, with mask.pth beside it
    ck2 = read_checkpoint(lvl1 / "model_ep2_it0.pth")
    assert ck2.form == "open_lth"
    check_outputs(ck2, ref, masks)
    # the replicate folder: highest level taken, with a note
    ck3 = read_checkpoint(run)
    assert any("level_1" in n for n in ck3.notes)
    check_outputs(ck3, ref, masks)
    assert ck.source_sha256 == ck3.source_sha256


def test_open_lth_checkpoint_pth(tmp_path):
    """checkpoint.pth: PrunedModel state ('model.' weights, 'mask_<a___b>' buffers) under DataParallel."""
    model = make_model()
    masks = _openlth_masks(model)
    ref = masked_copy(model, masks)
    sd = {}
    for k, v in model.state_dict().items():
        sd["module.model." + k] = v
    for k, m in masks.items():
        sd["module.mask_" + k.replace(".", "___")] = m.float()
    p = tmp_path / "checkpoint.pth"
    torch.save({"ep": 2, "it": 0, "model_state_dict": sd, "optimizer_state_dict": sgd_state(make_model(9)),
                "logger": "train_loss,0,1.0"}, p)
    ck = read_checkpoint(p)
    assert ck.form == "open_lth"
    check_outputs(ck, ref, masks)


def test_rigl_reproducibility(tmp_path):
    model = make_model()
    masks = random_masks(model)
    ref = masked_copy(model, masks)
    ckpt = {
        "step": 100,
        "epoch": 3,
        "model": ref.state_dict(),
        "optimizer": sgd_state(make_model(9)),
        "val_loss": 0.5,
        "mask": {
            "baseline_nonzero": 1234,
            "masks": {k: m.float() for k, m in masks.items()},
            "stats": {"variance_dict": {}, "zeros_dict": {k: 1.0 for k in masks}, "total_zero": 3},
            "mask_step": 100,
            "total_params": 999,
        },
    }
    p = tmp_path / "epoch_3.pth"
    torch.save(ckpt, p)
    ck = read_checkpoint(p)
    assert ck.form == "rigl_reproducibility"
    check_outputs(ck, ref, masks)


def test_rigl_reproducibility_dataparallel_masks(tmp_path):
    model = make_model()
    masks = random_masks(model)
    ref = masked_copy(model, masks)
    ckpt = {"epoch": 3, "model": {"module." + k: v for k, v in ref.state_dict().items()},
            "mask": {"masks": {"module." + k: m.float() for k, m in masks.items()}}}
    p = tmp_path / "best_model.pth"
    torch.save(ckpt, p)
    check_outputs(read_checkpoint(p), ref, masks)


def test_rigl_torch(tmp_path):
    model = make_model()
    order = rigl_torch_weight_names(Net())
    # rigl_torch.util.get_W: Conv2d/Linear and anything with .weight except BatchNorm2d, DFS order
    assert order == ["features.0.weight", "features.4.weight", "classifier.0.weight",
                     "classifier.1.weight", "classifier.3.weight"]
    masks = random_masks(model, names=["features.4.weight", "classifier.0.weight", "classifier.3.weight"])
    ref = masked_copy(model, masks)
    backward = [None, masks["features.4.weight"], masks["classifier.0.weight"], None, masks["classifier.3.weight"]]
    sd = model.state_dict()
    pruner = {
        "dense_allocation": 0.4, "S": [0, 0.6, 0.6, 0, 0.6], "N": [sd[n].numel() for n in order],
        "hyperparams": {"delta_T": 100, "alpha": 0.3, "T_end": 1000, "ignore_linear_layers": False,
                        "static_topo": False, "sparsity_distribution": "uniform", "grad_accumulation_n": 1},
        "step": 10, "rigl_steps": 1, "backward_masks": backward, "_linear_layers_mask": [0, 0, 1, 0, 1],
    }
    p = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "net", "state_dict": {"module." + k: v for k, v in sd.items()},
                "best_acc1": torch.tensor(12.5), "optimizer": sgd_state(make_model(9)), "pruner": pruner}, p)
    with pytest.raises(ModelRequiredError, match="model="):
        read_checkpoint(p)
    ck = read_checkpoint(p, model=Net())
    assert ck.form == "rigl_torch"
    check_outputs(ck, ref, masks)
    # a model whose layers do not line up is refused
    with pytest.raises(ModelRequiredError):
        read_checkpoint(p, model=nn.Sequential(nn.Linear(3, 3)))


def test_torch_ao(tmp_path):
    from torch.ao.pruning import WeightNormSparsifier

    model = make_model()
    sp = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=2)
    sp.prepare(model, [{"tensor_fqn": "classifier.0.weight"}, {"tensor_fqn": "classifier.3.weight"}])
    sp.step()
    masks = {fqn: s["mask"].clone() for fqn, s in sp.state.items()}
    with torch.no_grad():
        ref_out = model(X)  # parametrized model computes W * mask
    p = tmp_path / "ao.pt"
    torch.save(model.state_dict(), p)
    assert "classifier.0.parametrizations.weight.original" in model.state_dict()

    with pytest.raises(MissingMasksError, match="not saved in the checkpoint") as ei:
        read_checkpoint(p)
    assert "masks=" in str(ei.value)

    # masks as sparsifier.state_dict(), as {fqn: mask}, and as a file
    for given in (sp.state_dict(), masks):
        ck = read_checkpoint(p, masks=given)
        assert ck.form == "torch_ao"
        fresh = make_model(123)
        fresh.load_state_dict(match_state_dict(ck, fresh), strict=True)
        with torch.no_grad():
            out = fresh.eval()(X)
        assert ((out - ref_out).norm() / ref_out.norm()).item() <= 1e-5
        assert set(ck.masks) == set(masks) and all(torch.equal(ck.masks[k], masks[k]) for k in masks)
    mp = tmp_path / "masks.pt"
    torch.save(masks, mp)
    ck = read_checkpoint(p, masks=str(mp))
    assert ck.masks_sha256 is not None and torch.equal(ck.masks["classifier.0.weight"], masks["classifier.0.weight"])


@pytest.mark.parametrize("s0", [0.0, 0.5])
def test_continuous_sparsification(tmp_path, s0):
    model = make_model()
    g = torch.Generator().manual_seed(8)
    sd = {}
    masks = {}
    for k, v in model.state_dict().items():
        sd[k] = v
        if k in ("features.0.weight", "features.4.weight"):  # SoftMaskedConv2d; classifier stays nn.Linear
            s = torch.randn(v.shape, generator=g)
            sd[k[: -len("weight")] + "mask_weight"] = s
            sd[k[: -len("weight")] + "init_weight"] = torch.randn(v.shape, generator=g)
            masks[k] = s > 0
    p = tmp_path / "cs.pt"
    torch.save(sd, p)
    scale = 1.0 / torch.sigmoid(torch.tensor(s0)).item()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for n, prm in ref.named_parameters():
            if n in masks:
                prm.mul_(masks[n].float() * scale)
    ck = read_checkpoint(p, cs_s0=s0)
    assert ck.form == "continuous_sparsification"
    assert not any("mask_weight" in k or "init_weight" in k for k in ck.state_dict)
    check_outputs(ck, ref.eval(), masks)


def test_dst(tmp_path):
    model = make_model()
    sd = dict(model.state_dict())
    masks = {}
    for k in PRUNABLE:
        w = sd[k]
        flat = w.abs().reshape(w.shape[0], -1)
        t = flat.quantile(0.6, dim=1)
        if k == "classifier.3.weight":
            t = torch.full_like(t, 1e3)  # keeps <= 1%: the module resets its threshold to 0
            masks[k] = w != 0
        else:
            masks[k] = (flat > t[:, None]).reshape(w.shape)
        sd[k[: -len("weight")] + "threshold"] = t
    p = tmp_path / "final_model.pth"
    torch.save(sd, p)
    ref = masked_copy(model, masks)
    ck = read_checkpoint(p)
    assert ck.form == "dst"
    assert any("resets" in n for n in ck.notes)
    check_outputs(ck, ref, masks)


def test_explicit_masks_file(tmp_path):
    model = make_model()
    masks = random_masks(model)
    ref = masked_copy(model, masks)
    p = tmp_path / "dense.pt"
    torch.save({"net": model.state_dict(), "acc": 91.0, "epoch": 200}, p)
    mp = tmp_path / "masks.pt"
    torch.save({"module." + k: m.to(torch.uint8) for k, m in masks.items()}, mp)
    ck = read_checkpoint(p, masks=mp)
    assert ck.form == "explicit" and not ck.masks_inferred
    check_outputs(ck, ref, masks)
    ck2 = read_checkpoint(p, masks={k: m.float() for k, m in masks.items()})
    check_outputs(ck2, ref, masks)


# --------------------------------------------------------------------------- matching


def test_match_prefixes_and_rename():
    model = make_model()
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    out = match_state_dict(sd, Net())
    assert set(out) == set(Net().state_dict()) and out.notes and "model." in out.notes[0]
    # the model has the prefix instead
    wrapped = nn.Sequential()
    wrapped.add_module("backbone", Net())
    out2 = match_state_dict(model.state_dict(), wrapped)
    assert set(out2) == set(wrapped.state_dict())
    # explicit rename
    out3 = match_state_dict({"enc." + k: v for k, v in model.state_dict().items()}, Net(), rename={"enc.": ""})
    assert set(out3) == set(Net().state_dict())
    masks = match_masks({"model.features.0.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)}, Net(),
                        key_map=out.key_map)
    assert list(masks) == ["features.0.weight"]
    # missing num_batches_tracked (pre-0.4.1 checkpoints) is filled from the model
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out4 = match_state_dict(old, Net())
    assert any("num_batches_tracked" in n for n in out4.notes)


def test_key_mismatch_message():
    model = make_model()
    sd = dict(model.state_dict())
    sd["features.0.weight"] = torch.zeros(4, 3, 3, 3)
    sd["head.weight"] = sd.pop("classifier.3.weight")
    with pytest.raises(CheckpointMismatchError) as ei:
        match_state_dict(sd, Net())
    e = ei.value
    assert isinstance(e, KeyError)
    msg = str(e)
    assert "missing" in msg and "classifier.3.weight" in msg
    assert "unexpected" in msg and "head.weight" in msg
    assert "features.0.weight" in msg and "[4, 3, 3, 3]" in msg and "[8, 3, 3, 3]" in msg
    assert "rename=" in msg
    assert e.missing == ["classifier.3.weight"] and e.unexpected == ["head.weight"]


# --------------------------------------------------------------------------- errors


class _Args:  # a non-tensor object a training script might pickle (args namespace)
    def __init__(self):
        self.lr = 0.1


def test_unsafe_pickle_refused(tmp_path):
    model = make_model()
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "args": _Args()}, p)
    with pytest.raises(UnsafeCheckpointError) as ei:
        read_checkpoint(p)
    msg = str(ei.value)
    assert "unsafe=True" in msg and "--unsafe" in msg and str(p) in msg and "_Args" in msg
    with pytest.warns(UnsafeLoadWarning):
        ck = read_checkpoint(p, unsafe=True)
    assert ck.form == "dense_zeros"


def test_numpy_scalars_load_safely(tmp_path):
    np = pytest.importorskip("numpy")
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": make_model().state_dict(), "best_prec1": np.float64(71.5)}, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsafeLoadWarning)
        ck = read_checkpoint(p)
    assert ck.meta["best_prec1"] == 71.5


def test_mask_shape_mismatch(tmp_path):
    model = make_model()
    sd = dict(model.state_dict())
    sd["classifier.0.weight_mask"] = torch.ones(32, 255)
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    with pytest.raises(MaskShapeError) as ei:
        read_checkpoint(p)
    msg = str(ei.value)
    assert "classifier.0.weight" in msg and "[32, 255]" in msg and "[32, 256]" in msg and str(p) in msg


def test_mask_not_binary(tmp_path):
    model = make_model()
    sd = dict(model.state_dict())
    sd["classifier.0.weight_mask"] = torch.full((32, 256), 0.5)
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    with pytest.raises(MaskValueError, match="0 and 1"):
        read_checkpoint(p)


def test_unknown_layout_lists_families(tmp_path):
    model = make_model()
    sd = dict(model.state_dict())
    sd["features.0.scores"] = torch.randn(8, 3, 3, 3)  # edge-popup style: not a form we know
    p = tmp_path / "scores.pt"
    torch.save(sd, p)
    with pytest.raises(UnknownLayoutError) as ei:
        read_checkpoint(p)
    msg = str(ei.value)
    assert "features.0.scores" in msg and "*.weight" in msg and "mask_form=" in msg


def test_forced_form_absent_and_bad_form(tmp_path):
    p = tmp_path / "plain.pt"
    torch.save(make_model().state_dict(), p)
    with pytest.raises(FormNotPresentError):
        read_checkpoint(p, mask_form="torch_prune")
    with pytest.raises(ValueError):
        read_checkpoint(p, mask_form="nope")


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "history": [1.0, 2.0]}, p)
    with pytest.raises(UnknownLayoutError, match="could not find a state_dict"):
        read_checkpoint(p)


# --------------------------------------------------------------------------- hostile files
# Each read that could hang or allocate without bound runs in a child process under a timeout
# and an address-space cap, so a regression fails the test instead of taking the machine down.

_READ_IN_CHILD = """
import json, resource, sys
import torch
from sparse_rt.ingest import read_checkpoint
cap = int(sys.argv[3]) << 20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    read_checkpoint(sys.argv[1], **json.loads(sys.argv[2]))
    result = {"error": None}
except BaseException as exc:
    result = {"error": type(exc).__name__, "ingest": "IngestError" in {c.__name__ for c in type(exc).__mro__},
              "message": str(exc)}
print(json.dumps(result))
"""


def read_in_child(path, memory_mib=1536, timeout=120, **kwargs):
    """``{"error": exception class name or None, "ingest": bool, "message"}`` of ``read_checkpoint(path)``
    run in a child with at most ``memory_mib`` MiB of address space."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", _READ_IN_CHILD, str(path), json.dumps(kwargs), str(memory_mib)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("layout", ["checkpoint", "masks file", "mask.pth", "model file"])
def test_fifo_is_refused_without_opening_it(tmp_path, layout):
    """A FIFO blocks whoever opens it until a writer comes: the reader must refuse it by its stat."""
    state = make_model().state_dict()
    kwargs = {}
    if layout == "checkpoint":
        path = _fifo(tmp_path / "ckpt.pt")
    elif layout == "masks file":
        path = tmp_path / "ckpt.pt"
        torch.save(state, path)
        kwargs["masks"] = str(_fifo(tmp_path / "masks.pt"))
    else:  # an OpenLTH level folder
        path = tmp_path / "level_1" / "main"
        path.mkdir(parents=True)
        if layout == "mask.pth":
            torch.save(state, path / "model_ep2_it0.pth")
            _fifo(path / "mask.pth")
        else:
            torch.save(_openlth_masks(make_model()), path / "mask.pth")
            _fifo(path / "model_ep2_it0.pth")
    result = read_in_child(path, timeout=60, **kwargs)
    assert result["error"] == "CheckpointNotFoundError", result
    assert "is a FIFO, not a regular file" in result["message"], result


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(3, 4)


_W = torch.randn(4, 3)


@pytest.mark.parametrize("content,kwargs,error,message", [
    ({"l.weight": torch.ones(4, 3, dtype=torch.bool), "l.threshold": torch.zeros(4)}, {},
     UnsupportedTensorError, r"weight 'l.weight' is torch.bool; weights must be real floating"),
    ({"l.weight": _W, "l.mask_weight": torch.randn(4, 3, dtype=torch.complex64)}, {},
     UnsupportedTensorError, r"score 'l.mask_weight' is torch.complex64"),
    ({"l.weight_orig": torch.ones(4, 3, dtype=torch.int32), "l.weight_mask": torch.ones(4, 3)}, {},
     UnsupportedTensorError, r"masked weight 'l.weight' is torch.int32"),
    ({"l.weight": _W.to_sparse()}, {}, UnsupportedTensorError, r"'l.weight' has layout torch.sparse_coo"),
    ({"l.weight": _W.to_sparse_csr()}, {}, UnsupportedTensorError, r"'l.weight' has layout torch.sparse_csr"),
    ({"l.weight": _W, "l.weight_mask": torch.ones(4, 3).to_sparse()}, {},
     UnsupportedTensorError, r"'l.weight_mask' has layout torch.sparse_coo"),
    ({"l.weight": torch.quantize_per_tensor(_W, 0.1, 0, torch.qint8)}, {},
     UnsupportedTensorError, r"'l.weight' is quantized \(torch.qint8\)"),
    ({"l.weight": torch.empty(4, 3, device="meta")}, {}, UnsupportedTensorError, r"'l.weight' is on the meta device"),
    ({"l.weight": torch.zeros(1).expand(4000, 4000)}, {},
     UnsupportedTensorError, r"'l.weight' holds 16000000 elements but its storage only 4 bytes"),
    ({"state_dict": {"l.weight": _W, "l.bias": torch.zeros(4)}, "pruner": {"backward_masks": [3]}},
     {"model": _Layer()}, MaskValueError, r"mask for 'l.weight' is a int, expected a 0/1 tensor"),
    ({"state_dict": {"l.weight": _W}, "pruner": {"backward_masks": [torch.ones(4, 3).to_sparse()]}},
     {"model": _Layer()}, UnsupportedTensorError, r"'pruner>backward_masks\[0\]' has layout torch.sparse_coo"),
    ({"l.weight": _W, "l.mask_weight": torch.randn(4, 3)}, {"cs_s0": -1000.0},
     InvalidOptionError, r"cs_s0=-1000.0: .* finite number >= -80"),
    ({"l.weight": _W, "l.mask_weight": torch.randn(4, 3)}, {"cs_s0": float("nan")},
     InvalidOptionError, r"cs_s0=nan"),
])
def test_tensors_the_forms_cannot_use_are_refused_by_key(tmp_path, content, kwargs, error, message):
    path = tmp_path / "hostile.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR and quantized tensors warn when saved
        torch.save(content, path)
    with pytest.raises(error, match=message):
        read_checkpoint(path, **kwargs)


class _RunsCode:  # a pickle payload: unpickling it would call os.system
    def __reduce__(self):
        return os.system, ("true",)


def test_legacy_pickle_payload_is_unsafe_not_corrupt(tmp_path):
    """A legacy (non-zip) file's refusal reads "Trying to load unsupported GLOBAL posix.system whose
    module posix is blocked" (no "WeightsUnpickler error:"), and torch lists unsafe globals of zip files only."""
    path = tmp_path / "legacy.pt"
    torch.save({"l.weight": _W, "payload": _RunsCode()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)not tensors \(.*GLOBAL (posix|os|nt)\.system.*unsafe=True"):
        read_checkpoint(path)
    torch.save({"l.weight": _W}, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path).form == "dense_zeros"


def _rezipped(source, target, inflate_to=0):
    """``source`` re-zipped with deflate; ``inflate_to`` > 0 grows storage data/0 to that many zero bytes
    (and the pickle's element count with it): a zip bomb of a few KiB."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if inflate_to and info.filename.endswith("data/0"):
                data = bytes(inflate_to)
            if inflate_to and info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04t", b"J" + (inflate_to // 4).to_bytes(4, "little") + b"t", 1)
            zout.writestr(info.filename, data)
    return target


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "small.pt")
    bomb = _rezipped(tmp_path / "small.pt", tmp_path / "bomb.pt", inflate_to=256 << 20)
    assert os.path.getsize(bomb) < 1 << 20
    result = read_in_child(bomb, memory_mib=1536)
    assert result["error"] == "CorruptCheckpointError", result
    assert "zip members declare 268435" in result["message"] and "bomb.pt" in result["message"], result


def test_deflated_sparse_checkpoint_still_loads(tmp_path):
    weight = torch.randn(256, 256) * (torch.rand(256, 256) < 0.05)  # 95% zeros
    torch.save({"l.weight": weight}, tmp_path / "plain.pt")
    ckpt = read_checkpoint(_rezipped(tmp_path / "plain.pt", tmp_path / "deflated.pt"))
    assert torch.equal(ckpt.state_dict["l.weight"], weight)

"""SparseModel.from_checkpoint end to end: every checkpoint form, written with the training
codebases' key names and file layouts (on helpers.py's Net, as in test_ingest), converted and
compared with the masked dense model."""

import copy

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

import sparse_rt
from sparse_rt import SparseModel, models
from sparse_rt.arch import ArchitectureError
from sparse_rt.ingest import CheckpointMismatchError, rigl_torch_weight_names
from sparse_rt.nn import SparseConv2d, SparseLinear


def _dense_zeros_dataparallel(tmp_path, model, masks):
    """FreeTickets / Sup-tickets: {'epoch', 'state_dict', 'optimizer'} with DataParallel keys."""
    sd = {"module." + k: v for k, v in masked_copy(model, masks).state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": sgd_state(make_model(9))}, tmp_path / "model.pth")
    return tmp_path / "model.pth", {}


def _torch_prune(tmp_path, model, masks):
    import torch.nn.utils.prune as prune

    pruned = copy.deepcopy(model)
    for name, mask in masks.items():
        prune.custom_from_mask(pruned.get_submodule(name.removesuffix(".weight")), "weight", mask.float())
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    return tmp_path / "pruned.pt", {}


def _shrinkbench(tmp_path, model, masks):
    """Conv2dMasked / LinearMasked buffers in checkpoints/checkpoint-N.pt."""
    sd = dict(model.state_dict())
    for name, mask in masks.items():
        sd[name + "_mask"] = mask.float()
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / "checkpoint-10.pt"
    torch.save({"model_state_dict": sd, "optim_state_dict": sgd_state(make_model(9))}, path)
    return path, {}


def _open_lth(tmp_path, model, masks):
    """<hash>/replicate_1/level_<L>/main/{mask.pth, model_ep*_it*.pth}; the replicate folder is given."""
    run = tmp_path / "lottery_1a2b" / "replicate_1"
    for level, level_masks in ((0, {k: torch.ones_like(m) for k, m in masks.items()}), (1, masks)):
        d = run / f"level_{level}" / "main"
        d.mkdir(parents=True)
        torch.save({k: m.int() for k, m in level_masks.items()}, d / "mask.pth")
        torch.save(make_model(77).state_dict(), d / "model_ep0_it0.pth")
        torch.save(model.state_dict(), d / "model_ep2_it0.pth")  # pruned weights not zero
    return run, {}


def _rigl_reproducibility(tmp_path, model, masks):
    ckpt = {"step": 10, "epoch": 1, "model": masked_copy(model, masks).state_dict(),
            "optimizer": sgd_state(make_model(9)), "val_loss": 0.5,
            "mask": {"baseline_nonzero": 1, "masks": {k: m.float() for k, m in masks.items()},
                     "stats": {}, "mask_step": 10, "total_params": 1}}
    torch.save(ckpt, tmp_path / "epoch_1.pth")
    return tmp_path / "epoch_1.pth", {}


def _rigl_torch(tmp_path, model, masks):
    order = rigl_torch_weight_names(Net())
    sd = model.state_dict()
    pruner = {"dense_allocation": 0.4, "S": [0.6] * len(order), "N": [sd[n].numel() for n in order],
              "hyperparams": {}, "step": 10, "rigl_steps": 1,
              "backward_masks": [masks.get(n) for n in order], "_linear_layers_mask": [0] * len(order)}
    torch.save({"epoch": 1, "arch": "net", "state_dict": {"module." + k: v for k, v in sd.items()},
                "best_acc1": torch.tensor(10.0), "optimizer": sgd_state(make_model(9)), "pruner": pruner},
               tmp_path / "checkpoint.pth.tar")
    return tmp_path / "checkpoint.pth.tar", {}


def _torch_ao(tmp_path, model, masks):
    """Parametrized model state dict; the masks come from the sparsifier, passed as a file."""
    from torch.ao.pruning.sparsifier.utils import FakeSparsity
    from torch.nn.utils import parametrize

    prepared = copy.deepcopy(model)
    for name, mask in masks.items():
        parametrize.register_parametrization(prepared.get_submodule(name.removesuffix(".weight")), "weight",
                                             FakeSparsity(mask))
    torch.save(prepared.state_dict(), tmp_path / "ao.pt")
    torch.save({k: m.clone() for k, m in masks.items()}, tmp_path / "masks.pt")
    return tmp_path / "ao.pt", {"masks": str(tmp_path / "masks.pt")}


def _explicit(tmp_path, model, masks):
    torch.save({"net": model.state_dict(), "acc": 91.0, "epoch": 200}, tmp_path / "dense.pt")
    torch.save({"module." + k: m.to(torch.uint8) for k, m in masks.items()}, tmp_path / "masks.pt")
    return tmp_path / "dense.pt", {"masks": str(tmp_path / "masks.pt")}


def _dst(tmp_path, model, masks):
    """MaskedConv2d / MaskedMLP: per-row thresholds; the masks are what they select."""
    sd = dict(model.state_dict())
    for name in masks:
        flat = sd[name].abs().reshape(sd[name].shape[0], -1)
        threshold = flat.quantile(0.6, dim=1)
        masks[name] = (flat > threshold[:, None]).reshape(sd[name].shape)
        sd[name.removesuffix("weight") + "threshold"] = threshold
    torch.save(sd, tmp_path / "final_model.pth")
    return tmp_path / "final_model.pth", {}


def _continuous_sparsification(tmp_path, model, masks):
    """SoftMaskedConv2d: mask_weight scores (mask s > 0, W / sigmoid(s0) with s0 = 0) + init_weight."""
    sd = dict(model.state_dict())
    for name, mask in list(masks.items()):
        if sd[name].dim() != 4:  # CS masks convolutions only
            del masks[name]
            continue
        sd[name.removesuffix("weight") + "mask_weight"] = torch.where(mask, 1.0, -1.0)
        sd[name.removesuffix("weight") + "init_weight"] = torch.randn(mask.shape)
        sd[name] = sd[name] / 2  # stored weights; the effective ones are 2x (1/sigmoid(0))
    torch.save(sd, tmp_path / "cs.pt")
    return tmp_path / "cs.pt", {}


WRITERS = {"dense_zeros": _dense_zeros_dataparallel, "torch_prune": _torch_prune, "shrinkbench": _shrinkbench,
           "open_lth": _open_lth, "rigl_reproducibility": _rigl_reproducibility, "rigl_torch": _rigl_torch,
           "torch_ao": _torch_ao, "explicit": _explicit, "dst": _dst,
           "continuous_sparsification": _continuous_sparsification}


@pytest.mark.parametrize("form", sorted(WRITERS))
def test_from_checkpoint_every_form(tmp_path, form):
    model = make_model()
    masks = random_masks(model)
    path, kwargs = WRITERS[form](tmp_path, model, masks)
    sparse = SparseModel.from_checkpoint(path, Net(), format="csr", **kwargs)
    assert sparse.source["form"] == form and len(sparse.source["sha256"]) == 64
    ref = masked_copy(model, masks)
    with torch.no_grad():
        assert rel_err(sparse(X), ref(X)) <= 1e-5
    converted = {name for name, m in sparse.module.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}
    assert converted == {name.removesuffix(".weight") for name in masks}


def test_arch_as_zoo_name_with_prefixed_keys(tmp_path):
    torch.manual_seed(0)
    dense = sparse_rt.magnitude_prune(models.create("cifar_resnet", depth=8).eval(), 0.8)
    torch.save({"model_state_dict": {"model." + k: v for k, v in dense.state_dict().items()}}, tmp_path / "c.pt")
    sparse = SparseModel.from_checkpoint(tmp_path / "c.pt", "cifar_resnet", arch_kwargs={"depth": 8}, format="csr")
    assert sparse.arch_spec == {"name": "cifar_resnet", "kwargs": {"depth": 8}}
    assert any("'model.'" in note for note in sparse.source["notes"])  # the mapping is reported
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(sparse(x), dense(x)) <= 1e-5


@pytest.mark.parametrize("kwargs, noted", [({"depth": 8}, True), ({"depth": 8, "log_softmax": True}, False)])
def test_logits_or_log_probabilities_is_noted_where_codebases_differ(tmp_path, kwargs, noted):
    """The zoo's models return logits, FreeTickets' and Sup-tickets' copies log_softmax."""
    torch.manual_seed(0)
    torch.save(models.create("cifar_resnet", depth=8).state_dict(), tmp_path / "c.pt")
    sparse = SparseModel.from_checkpoint(tmp_path / "c.pt", "cifar_resnet", arch_kwargs=kwargs)
    notes = [n for n in sparse.source["notes"] if "arch_kwargs={'log_softmax': True}" in n]
    assert len(notes) == noted


def test_arch_as_import_string_with_kwargs(tmp_path):
    model = make_model()
    masks = random_masks(model)
    path, _ = _shrinkbench(tmp_path, model, masks)
    sparse = SparseModel.from_checkpoint(path, "helpers:make_model", arch_kwargs={"seed": 3},
                                         format="bsr:2x2", dtype="fp16")
    assert sparse.arch_spec == {"name": "helpers:make_model", "kwargs": {"seed": 3}}
    assert sparse.module.classifier[0].format == "bsr"
    assert sparse.module.classifier[0].values.dtype == torch.float16


def test_module_instance_is_not_changed(tmp_path):
    model = make_model()
    path, _ = _dense_zeros_dataparallel(tmp_path, model, random_masks(model))
    arch = Net()
    before = {k: v.clone() for k, v in arch.state_dict().items()}
    sparse = SparseModel.from_checkpoint(path, arch, format="csr")
    assert sparse.arch_spec is None
    assert all(torch.equal(v, before[k]) for k, v in arch.state_dict().items())


def test_architecture_mismatch_lists_keys_and_rename(tmp_path):
    torch.save(models.create("cifar_resnet", depth=8).state_dict(), tmp_path / "c.pt")
    with pytest.raises(CheckpointMismatchError) as e:
        SparseModel.from_checkpoint(tmp_path / "c.pt", "cifar_resnet", arch_kwargs={"depth": 14, "width": 8})
    msg = str(e.value)
    assert "missing in checkpoint" in msg and "blocks.3.conv1.weight" in msg
    assert "shape mismatch" in msg and "rename=" in msg


@pytest.mark.parametrize("arch, kwargs, match", [
    ("no_such_model", {}, "neither a zoo model"),
    ("cifar_resnet", {"depth": 9}, "6n\\+2"),
    ("helpers:nothing", {}, "no attribute 'nothing'"),
    ("no_such_pkg.mod:fn", {}, "cannot import"),
    ("helpers:make_model", {"colour": 1}, "rejected the keyword"),
    ("helpers:PRUNABLE", {}, "not callable"),
])
def test_bad_arch(tmp_path, arch, kwargs, match):
    torch.save(make_model().state_dict(), tmp_path / "m.pt")
    with pytest.raises(ArchitectureError, match=match):
        SparseModel.from_checkpoint(tmp_path / "m.pt", arch, arch_kwargs=kwargs)


def test_sparsify_progress_wraps_layers():
    seen = []

    def progress(items):
        seen.extend(name for name, _ in items)
        return items

    pruned = sparse_rt.magnitude_prune(Net(), 0.9)
    model = sparse_rt.sparsify(pruned, progress=progress)
    assert seen == [name.removesuffix(".weight") for name in PRUNABLE]
    assert [row.name for row in model.summary()] == seen
    assert isinstance(model.module.features[0], SparseConv2d) and isinstance(pruned.features[0], nn.Conv2d)

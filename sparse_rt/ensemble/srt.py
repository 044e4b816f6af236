"""Ensembles in .srt files, written and read by sparse_rt.io.srt: the members' modules go in as
one nn.ModuleList (tensor keys "0.conv1.values", "1.conv1.values", ...), and the manifest's
source records {"ensemble": {"combine", "members": [{"arch", "source"}]}}."""

import copy
import dataclasses

from torch import nn

from ..io import srt
from ..model import SparseModel, Summary


def save_ensemble(ensemble, path):
    members = list(ensemble.members)
    rows = [dataclasses.replace(row, name=f"{i}.{row.name}") for i, m in enumerate(members) for row in m.layers]
    source = {"ensemble": {"combine": ensemble.combine,
                           "members": [{"arch": m.arch_spec, "source": m.source} for m in members]}}
    srt.save(SparseModel(nn.ModuleList([m.module for m in members]), rows, source=source), path)


def ensemble_info(manifest):
    """The manifest's ensemble record, or None for a single model."""
    return (manifest.get("source") or {}).get("ensemble")


def load_ensemble(path, arch=None, *, arch_kwargs=None, trust_arch=False, combine=None, fuse=True):
    from .core import SparseEnsemble

    manifest = srt.read_manifest(path)
    info = ensemble_info(manifest)
    if not info:
        raise srt.SrtHeaderError(f"{path} holds a single model, not an ensemble: read it with sparse_rt.load")
    modules, specs = [], []
    for member in info["members"]:
        module, spec = srt._build({"arch": member["arch"]}, arch, arch_kwargs, trust_arch, path)
        modules.append(copy.deepcopy(module) if isinstance(arch, nn.Module) else module)
        specs.append(spec)
    whole = srt.load_model(path, manifest, nn.ModuleList(modules), None, trust_arch)
    members = []
    for i, (module, spec, member) in enumerate(zip(whole.module, specs, info["members"])):
        prefix = f"{i}."
        rows = [dataclasses.replace(r, name=r.name[len(prefix):]) for r in whole.layers if r.name.startswith(prefix)]
        members.append(SparseModel(module, Summary(rows), arch_spec=spec, source=member["source"]).eval())
    return SparseEnsemble(members, combine=combine or info["combine"], fuse=fuse)

"""What a model argument names, resolved to a model: a .srt file (a model or an ensemble), a
training checkpoint with its architecture, or a zoo name magnitude-pruned on the fly. The command
line and sparse_rt.bench.run take the same references through this one function."""

import os
from typing import Optional, Tuple, Union

import torch
from torch import nn

from . import models
from .arch import spec_input_shape
from .convert import from_checkpoint
from .ensemble import SparseEnsemble
from .inputs import example_input
from .model import sparsify
from .pruning import magnitude_prune
from .serialize import load


def resolve_model(ref: Union[str, os.PathLike], *, arch: Union[nn.Module, str, None] = None,
                  arch_kwargs: Optional[dict] = None, sparsity: Optional[float] = None, seed: int = 0,
                  trust_arch: bool = False, device: Union[str, torch.device, None] = None,
                  **convert_options) -> Tuple[nn.Module, Optional[dict], Optional[tuple]]:
    """(module, arch spec, per-sample input shape or None) for `ref`:

    - a path ending in .srt: loaded (a SparseModel or a SparseEnsemble; `arch`, `arch_kwargs`,
      `trust_arch` as sparse_rt.load);
    - another existing path: a training checkpoint converted into `arch` (required), with
      `arch_kwargs` and `convert_options` as SparseModel.from_checkpoint;
    - a zoo name: built with `arch_kwargs` (weights seeded by `seed`) and magnitude-pruned to
      `sparsity` (required), its keep-dense layers (the stem convolution) left dense.
    `device`: where the model will run, for the format choice of a conversion (sparse_rt.sparsify);
    a .srt keeps the formats it was saved with.
    """
    text = os.fspath(ref)
    if text.endswith(".srt"):
        if sparsity is not None:
            raise ValueError("a sparsity applies to a zoo model name, not to a .srt file")
        loaded = load(text, arch, arch_kwargs=arch_kwargs, trust_arch=trust_arch)
        spec = loaded.members[0].arch_spec if isinstance(loaded, SparseEnsemble) else loaded.arch_spec
        return loaded, spec, spec_input_shape(spec)
    if os.path.exists(text):
        if arch is None:
            raise ValueError(f"{text} is a checkpoint: name its architecture with --arch (a zoo name "
                             "or 'pkg.module:factory')")
        if sparsity is not None:
            raise ValueError("a sparsity applies to a zoo model name, not to a checkpoint")
        converted = from_checkpoint(text, arch, arch_kwargs=arch_kwargs, device=device, **convert_options)
        return converted, converted.arch_spec, spec_input_shape(converted.arch_spec)
    if text not in models.names():
        raise ValueError(f"model {text!r} is neither a file (.srt or checkpoint) nor a zoo model "
                         f"({', '.join(models.names())})")
    if sparsity is None:
        raise ValueError(f"zoo model {text!r} is dense: give --sparsity (e.g. 0.9 or 0.5,0.9) to magnitude-prune it")
    spec = {"name": text, "kwargs": dict(arch_kwargs or {})}
    torch.manual_seed(seed)
    dense = models.create(text, **spec["kwargs"]).eval()
    # Planned on one sample of its standard input, so that the cost model sees how many rows each
    # Linear layer takes (a transformer's: every token), not a guessed batch of 1.
    shape = spec_input_shape(spec)
    model = sparsify(magnitude_prune(dense, sparsity, exclude=models.keep_dense(text)), device=device,
                     example_inputs=(example_input(1, shape, seed=seed),)).eval()
    model.arch_spec = spec
    return model, spec, shape

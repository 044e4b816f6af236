"""Checkpoints as Hugging Face users keep them: a ``save_pretrained`` folder holding
``config.json`` and the weights as ``model.safetensors`` (or ``pytorch_model.bin``), or sharded:
``model.safetensors.index.json`` (``pytorch_model.bin.index.json``) whose ``weight_map`` names
the shard of every tensor. Masks are the weights' zeros (``prune.remove`` then ``save_pretrained``)
or the ``*_orig`` / ``*_mask`` pairs ``torch.nn.utils.prune`` leaves; both are ordinary forms.
"""

from __future__ import annotations

import json
import os

from .errors import CheckpointNotFoundError, CorruptCheckpointError

# In the order save_pretrained prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"


def looks_like_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.lexists(os.path.join(path, name + suffix))
                                       for name in WEIGHT_FILES for suffix in ("", ".index.json"))


def resolve_hf_folder(path: str) -> tuple[list[str], list[str]]:
    """``(weight files, notes)`` of a save_pretrained folder: the one file, or every shard its index
    names (each a plain file name inside the folder)."""
    for name in WEIGHT_FILES:
        single = os.path.join(path, name)
        if os.path.lexists(single):
            return [single], [f"hugging face folder: {name}"]
        index = single + ".index.json"
        if os.path.lexists(index):
            shards = _shards(index)
            return [os.path.join(path, s) for s in shards], [f"hugging face folder: {len(shards)} shard(s) of {name}"]
    raise CheckpointNotFoundError(f"{path}: no {' or '.join(WEIGHT_FILES)} (or its .index.json) in the folder")


def _shards(index_path: str) -> list[str]:
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpointError(f"{index_path}: not a shard index (a 'weight_map' of tensor name -> "
                                     f"file name): {type(e).__name__}: {e}") from None
    bad = [s for s in shards if not isinstance(s, str) or not s or os.path.basename(s) != s or s in (".", "..")]
    if bad or not shards:
        raise CorruptCheckpointError(f"{index_path}: shard names must be file names inside the folder, got {bad[:3]}")
    return shards


def read_hf_config(path: str) -> dict | None:
    """The config.json of a save_pretrained folder (or beside a weights file), or None."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    config = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            loaded = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"{config}: not a JSON config: {e}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model_type"), str):
        raise CorruptCheckpointError(f"{config}: a Hugging Face config needs a 'model_type'")
    return loaded

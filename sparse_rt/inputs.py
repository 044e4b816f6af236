"""Example inputs built from a per-sample shape: images and features as seeded normal floats,
token ids (a model whose first argument is an embedding lookup: BERT, GPT-2, T5) as seeded
integers below the vocabulary size."""

from typing import Optional

import torch


def example_input(batch: int, shape, *, tokens: Optional[int] = None, seed: int = 0, dtype=None,
                  device="cpu") -> torch.Tensor:
    """[batch, *shape]: normal floats (of `dtype`), or with `tokens` (a vocabulary size) int64 token
    ids in [0, tokens)."""
    generator = torch.Generator().manual_seed(seed)
    if tokens is not None:
        if not (isinstance(tokens, int) and tokens >= 1):
            raise ValueError(f"tokens must be a vocabulary size >= 1, got {tokens!r}")
        return torch.randint(0, tokens, (batch, *shape), generator=generator).to(device)
    return torch.randn(batch, *shape, generator=generator).to(device=device, dtype=dtype)


def zero_input(shape, *, tokens: Optional[int] = None, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """One sample of zeros (token id 0 with `tokens`), for a forward pass that only counts."""
    return torch.zeros((1, *shape), dtype=torch.int64 if tokens is not None else dtype, device=device)

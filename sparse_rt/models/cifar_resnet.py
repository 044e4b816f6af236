"""CIFAR ResNet (``cifar_resnet``, depth 6n+2: 20/32/56/...) with OpenLTH's layout.

Layout followed: facebookresearch/open_lth ``models/cifar_resnet.py`` (``Model`` and
``Model.Block``; model names ``cifar_resnet_N[_W]``). The same modules are vendored in
luuyin/Sup-tickets ``CIFAR/models/cifar_resnet.py`` (used there for ``cifar_resnet_32``; that
copy drops OpenLTH's base class and ends in ``log_softmax``).
Confirmed there:

* stem ``conv`` (3x3, stride 1, pad 1, no bias, 3 -> W) and ``bn`` (*not* conv1/bn1);
* ``blocks`` is one flat ``nn.Sequential`` of 3 segments x D blocks, D = (N - 2) / 6,
  segment widths W, 2W, 4W (W = 16 by default), so ``blocks.0 .. blocks.{3D-1}``;
* each block: ``conv1`` (3x3, stride 2 on the first block of segments 2 and 3), ``bn1``,
  ``conv2`` (3x3), ``bn2``; no biases;
* ``shortcut`` is ``nn.Sequential(conv 1x1 stride 2, BatchNorm2d)`` ->
  ``blocks.K.shortcut.0.weight`` and ``blocks.K.shortcut.1.*`` when the block downsamples or
  changes width, otherwise an *empty* ``nn.Sequential`` (identity, no state-dict entries).
  With the default plan only the first block of segments 2 and 3 has one
  (``blocks.D`` and ``blocks.2D``);
* global average pool (OpenLTH: ``avg_pool2d`` over the full map), then ``fc`` =
  ``nn.Linear(4W, num_classes)``.

OpenLTH's forward returns logits; Sup-tickets' copy returns ``log_softmax`` -- pass
``log_softmax=True`` to reproduce the latter (no state-dict entries either way).
State-dict size of cifar_resnet_20 (W=16): 128 entries.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import MAX_DEPTH, check_int
from ._registry import register

__all__ = ["CifarResNet", "Block", "cifar_resnet"]


class Block(nn.Module):
    """OpenLTH residual block (post-activation)."""

    def __init__(self, f_in: int, f_out: int, downsample: bool = False) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            # OpenLTH always uses stride 2 here (it only changes width when downsampling).
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(f_out),
            )
        else:
            self.shortcut = nn.Sequential()  # identity, no parameters
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 log_softmax: bool = False) -> None:
        super().__init__()
        d = (depth - 2) // 6
        plan = [(width, d), (2 * width, d), (4 * width, d)]
        current = plan[0][0]
        self.conv = nn.Conv2d(3, current, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(current)
        self.relu = nn.ReLU()
        blocks = []
        for seg, (filters, num_blocks) in enumerate(plan):
            for b in range(num_blocks):
                blocks.append(Block(current, filters, downsample=seg > 0 and b == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(plan[-1][0], num_classes)
        self.head = nn.LogSoftmax(dim=1) if log_softmax else nn.Identity()

        for m in self.modules():  # OpenLTH's default: kaiming_normal convs/linear, BN w=1 b=0
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.head(self.fc(out))


@register("cifar_resnet", input_shape=(3, 32, 32), keep_dense=("conv",))
def cifar_resnet(*, depth: int = 20, width: int = 16, num_classes: int = 10,
                 log_softmax: bool = False) -> CifarResNet:
    """OpenLTH ``cifar_resnet_{depth}[_{width}]``; depth must be 6n+2 (20, 32, 44, 56, 110, ...)."""
    check_int("depth", depth, minimum=8, maximum=MAX_DEPTH)
    if (depth - 2) % 6 != 0:
        raise ValueError(f"cifar_resnet depth must be 6n+2 (e.g. 20, 32, 56), got {depth}")
    check_int("width", width)
    check_int("num_classes", num_classes)
    return CifarResNet(depth, width, num_classes, bool(log_softmax))

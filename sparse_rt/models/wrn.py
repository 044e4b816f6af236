"""Wide ResNet (``wrn``, e.g. WRN-28-10, WRN-16-8) with the FreeTickets / Sup-tickets layout.

Layout followed: VITA-Group/FreeTickets ``sparselearning/models.py`` (classes ``WideResNet``,
``BasicBlock``, ``NetworkBlock``; names ``wrn-28-10``, ``wrn-28-2``, ``wrn-22-8``, ``wrn-16-8``,
``wrn-16-10`` in ``main_EDST.py``). The identical classes ship in luuyin/Sup-tickets
``CIFAR/sparselearning/models.py`` (and the sparselearning package of Dettmers' sparse
momentum, which both inherit). Confirmed there:

* ``conv1``: 3x3, 3 -> 16, no bias;
* ``block1``, ``block2``, ``block3`` are ``NetworkBlock`` s whose blocks live in
  ``blockK.layer`` (an ``nn.Sequential``) -> keys ``block1.layer.0.bn1.weight`` etc.;
  widths 16k, 32k, 64k (k = widen_factor), strides 1, 2, 2, n = (depth - 4) / 6 blocks each;
* pre-activation ``BasicBlock``: ``bn1`` (on the input width), ``conv1`` (3x3, carries the
  stride), ``bn2``, ``conv2`` (3x3); no biases; ``convShortcut`` (1x1, no bias, the stride)
  exists only when in != out channels (first block of each group when k > 1 -- ``None``
  otherwise, so no state-dict entry); when it exists it is applied to relu(bn1(x)),
  otherwise the raw input is the shortcut;
* head: ``bn1`` (64k) -> ReLU -> 8x8 average pool -> ``fc`` = ``nn.Linear(64k, num_classes)``.

Differences that do not touch the state dict: dropout (``dropout`` kwarg, FreeTickets'
``dropRate``) is an ``nn.Dropout`` module instead of ``F.dropout``; the pool is global
(``AdaptiveAvgPool2d(1)``, equal to ``avg_pool2d(., 8)`` on 32x32 inputs); FreeTickets returns
``log_softmax`` -- pass ``log_softmax=True`` to reproduce it (default: logits).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import MAX_DEPTH, check_int, check_prob
from ._registry import register

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet", "wrn"]


class WideBasicBlock(nn.Module):
    """FreeTickets ``BasicBlock`` (pre-activation wide block)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(p=drop_rate)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1,
                               bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 dropout: float = 0.0, log_softmax: bool = False) -> None:
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, dropout)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, dropout)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)
        self.head = nn.LogSoftmax(dim=1) if log_softmax else nn.Identity()
        self.nChannels = ch[3]

        for m in self.modules():  # FreeTickets' init (He-normal on fan-out, BN 1/0, fc bias 0)
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = torch.flatten(self.avgpool(out), 1)
        return self.head(self.fc(out))


@register("wrn", input_shape=(3, 32, 32), keep_dense=("conv1",))
def wrn(*, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
        dropout: float = 0.0, log_softmax: bool = False) -> WideResNet:
    """FreeTickets ``wrn-{depth}-{widen_factor}``; depth must be 6n+4 (16, 22, 28, 40, ...)."""
    check_int("depth", depth, minimum=10, maximum=MAX_DEPTH)
    if (depth - 4) % 6 != 0:
        raise ValueError(f"wrn depth must be 6n+4 (e.g. 16, 22, 28), got {depth}")
    check_int("widen_factor", widen_factor)
    check_int("num_classes", num_classes)
    return WideResNet(depth, widen_factor, num_classes, check_prob("dropout", dropout),
                      bool(log_softmax))

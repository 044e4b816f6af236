"""ImageNet ResNets (``resnet18``, ``resnet34``, ``resnet50``) with torchvision's layout.

Layout followed: pytorch/vision ``torchvision/models/resnet.py`` (classes ``BasicBlock``,
``Bottleneck``, ``ResNet``). Confirmed there, and reproduced here so torchvision-style
checkpoints (ImageNet sparse-training runs that build torchvision's ResNets) load with
``load_state_dict(strict=True)``:

* stem ``conv1`` (7x7, stride 2, pad 3, no bias) -> ``bn1`` -> ReLU -> 3x3/2 max-pool;
* stages ``layer1``..``layer4`` (64/128/256/512 planes, stride 1/2/2/2), each an
  ``nn.Sequential`` of blocks indexed ``0..n-1``;
* ``BasicBlock`` (expansion 1): ``conv1`` (3x3, carries the stride), ``bn1``, ``conv2`` (3x3),
  ``bn2``;
* ``Bottleneck`` (expansion 4, "ResNet v1.5": the stride sits on the 3x3 ``conv2``):
  ``conv1`` (1x1), ``bn1``, ``conv2`` (3x3), ``bn2``, ``conv3`` (1x1), ``bn3``;
* ``downsample`` = ``nn.Sequential(conv1x1(stride), BatchNorm2d)`` -> keys
  ``downsample.0.weight``, ``downsample.1.{weight,bias,running_mean,running_var,
  num_batches_tracked}``, present only
  on the first block of a stage whose stride != 1 or whose channel count changes;
* no conv has a bias; global average pool, then ``fc`` =
  ``nn.Linear(512 * expansion, num_classes)``.

State-dict sizes (confirmed against the structure above): resnet18 122 entries, resnet50 320.
The forward is the torchvision one, written with modules only (no functional conv/linear).
"""

from __future__ import annotations

from typing import List, Optional, Type, Union

import torch
import torch.nn as nn

from ._common import check_int
from ._registry import register

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # None -> no state-dict entries
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """torchvision-layout ResNet (groups=1, width_per_group=64, no dilation)."""

    def __init__(self, block: Block, layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            mods.append(block(self.inplanes, planes))
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register("resnet18", input_shape=(3, 224, 224), keep_dense=("conv1",))
def resnet18(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]), torchvision layout."""
    check_int("num_classes", num_classes)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual)


@register("resnet34", input_shape=(3, 224, 224), keep_dense=("conv1",))
def resnet34(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]), torchvision layout."""
    check_int("num_classes", num_classes)
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, zero_init_residual)


@register("resnet50", input_shape=(3, 224, 224), keep_dense=("conv1",))
def resnet50(*, num_classes: int = 1000, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 (Bottleneck v1.5, [3, 4, 6, 3]), torchvision layout."""
    check_int("num_classes", num_classes)
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual)

"""MobileNetV2 (``mobilenet_v2``) with torchvision's layout.

Layout followed: pytorch/vision ``torchvision/models/mobilenetv2.py`` (``InvertedResidual``,
``MobileNetV2``; the conv-BN-ReLU6 unit is ``ConvNormActivation``/``Conv2dNormActivation``,
formerly ``ConvBNReLU`` -- all three are an ``nn.Sequential(conv, bn, relu6)``, so the
indices below are the same across torchvision versions). Confirmed there:

* ``features`` is one ``nn.Sequential``:
  ``features.0`` = stem unit (3x3/2, 3 -> 32): ``features.0.0`` conv, ``features.0.1`` BN;
  ``features.1 .. features.17`` = inverted-residual blocks, each holding ``conv`` (an
  ``nn.Sequential``); ``features.18`` = final 1x1 unit (320 -> 1280): ``features.18.0/.1``.
* block with expand ratio 1 (``features.1``): ``conv.0`` = depthwise unit (``conv.0.0`` conv,
  ``conv.0.1`` BN), ``conv.1`` = pointwise-linear conv, ``conv.2`` = BN.
* block with expand ratio 6 (``features.2..17``): ``conv.0`` = pointwise expand unit,
  ``conv.1`` = depthwise unit (``conv.1.0``/``conv.1.1``), ``conv.2`` = pointwise-linear conv,
  ``conv.3`` = BN.
* residual add iff stride == 1 and in == out channels; no conv has a bias.
* ``classifier`` = ``nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))``
  -> keys ``classifier.1.weight`` / ``classifier.1.bias``.
* channel counts come from the (t, c, n, s) table and ``_make_divisible(c * width_mult, 8)``;
  ``last_channel = _make_divisible(1280 * max(1, width_mult), 8)``.

State-dict size at width 1.0: 314 entries. Pooling is an ``nn.AdaptiveAvgPool2d`` module
(torchvision calls the functional form; numerically identical, no parameters).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from ._common import check_int, check_prob
from ._registry import register

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat)
_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10% below it."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(cin: int, cout: int, kernel_size: int = 3, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        mods: List[nn.Module] = []
        if expand_ratio != 1:
            mods.append(_conv_bn_relu6(inp, hidden, kernel_size=1))
        mods += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*mods)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:  # a Python bool fixed at construction: fx-safe
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 round_nearest: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: List[nn.Module] = [_conv_bn_relu6(3, input_channel, stride=2)]
        for t, c, n, s in _SETTING:
            out_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, out_channel, s if i == 0 else 1, t))
                input_channel = out_channel
        features.append(_conv_bn_relu6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register("mobilenet_v2", input_shape=(3, 224, 224), keep_dense=("features.0.0",))
def mobilenet_v2(*, num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2, torchvision layout (``features.N...``, ``classifier.1``)."""
    check_int("num_classes", num_classes)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
    return MobileNetV2(num_classes, float(width_mult), 8, check_prob("dropout", dropout))

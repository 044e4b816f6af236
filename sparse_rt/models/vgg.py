"""CIFAR VGG (``vgg_cifar``, depth 11/13/16/19) with the Sup-tickets layout.

Layout followed: luuyin/Sup-tickets ``CIFAR/models/vgg.py`` (class ``VGG(dataset, depth,
init_weights, cfg, affine, batchnorm)``, built there as ``vgg.VGG(depth=19, dataset=...,
batchnorm=True)`` for ``--model vgg19`` in ``CIFAR/main_suptickets.py``). This is a CIFAR
VGG with a single linear classifier -- neither torchvision's ImageNet VGG nor the FreeTickets
``VGG16`` ('vgg-c'/'vgg-d'/'vgg-like': biased convs, BatchNorm1d classifier). Confirmed there:

* ``feature`` (singular) is one ``nn.Sequential``; per cfg entry v: ``Conv2d(in, v, 3,
  padding=1, bias=False)``, ``BatchNorm2d(v, affine=affine)``, ``ReLU`` (three indices), or
  ``MaxPool2d(2, 2)`` for 'M' (one index). Without batchnorm: conv, ReLU (two indices).
  So for depth 19: ``feature.0`` conv 3->64, ``feature.1`` BN, ``feature.3`` conv 64->64,
  ``feature.4`` BN, ``feature.6`` max-pool, ``feature.7`` conv 64->128, ...
* cfgs (no trailing 'M'; four pools leave 2x2 on 32x32 inputs):
  16: 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512;
  19: 64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512
  (11 and 13 too);
* head: average pool (2x2 for CIFAR, 4x4 for Tiny-ImageNet -- i.e. global), flatten,
  ``classifier`` = a single ``nn.Linear(512, num_classes)`` -> ``classifier.weight``/``.bias``.

Differences that do not touch the state dict: ``num_classes`` replaces the ``dataset`` string
(cifar10 -> 10, cifar100 -> 100, tiny_imagenet -> 200); the pool is ``AdaptiveAvgPool2d(1)``;
Sup-tickets returns ``log_softmax`` -- pass ``log_softmax=True`` to reproduce it (default: logits).
``affine=False`` drops the BN weight/bias entries, as in the original.
"""

from __future__ import annotations

from typing import Dict, List, Union

import torch
import torch.nn as nn

from ._common import check_int
from ._registry import register

__all__ = ["VGGCifar", "vgg_cifar", "CFGS"]

CFGS: Dict[int, List[Union[int, str]]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}


class VGGCifar(nn.Module):
    def __init__(self, depth: int = 19, num_classes: int = 10, batchnorm: bool = True,
                 affine: bool = True, log_softmax: bool = False) -> None:
        super().__init__()
        cfg = CFGS[depth]
        layers: List[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(cin, int(v), kernel_size=3, padding=1, bias=False))
            if batchnorm:
                layers.append(nn.BatchNorm2d(int(v), affine=affine))
            layers.append(nn.ReLU())
            cin = int(v)
        self.feature = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        self.head = nn.LogSoftmax(dim=1) if log_softmax else nn.Identity()

        for m in self.modules():  # Sup-tickets' weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.head(self.classifier(x))


@register("vgg_cifar", input_shape=(3, 32, 32), keep_dense=("feature.0",))
def vgg_cifar(*, depth: int = 19, num_classes: int = 10, batchnorm: bool = True,
              affine: bool = True, log_softmax: bool = False) -> VGGCifar:
    """Sup-tickets CIFAR VGG (``feature.N``, ``classifier``); depth in {11, 13, 16, 19}."""
    check_int("depth", depth, choices=CFGS.keys())
    check_int("num_classes", num_classes)
    return VGGCifar(depth, num_classes, bool(batchnorm), bool(affine), bool(log_softmax))

"""sparse_rt's built-in model zoo.

Each family rebuilds the architecture of the training codebase it names, with the same
``state_dict()`` keys, shapes and buffers, so checkpoints saved by that codebase load with
``load_state_dict(strict=True)``. Every model is a plain ``nn.Module`` built from
``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` / ... (no functional conv or linear calls),
so sparse_rt can swap its layers; forwards are deterministic in eval mode and free of
data-dependent Python control flow.

==================  ============================================  ==============================
name                layout of                                     file
==================  ============================================  ==============================
``resnet18/34/50``  pytorch/vision torchvision/models/resnet.py   ``resnet.py``
``mobilenet_v2``    pytorch/vision torchvision/models/            ``mobilenet.py``
                    mobilenetv2.py
``cifar_resnet``    facebookresearch/open_lth                     ``cifar_resnet.py``
                    models/cifar_resnet.py
``wrn``             VITA-Group/FreeTickets                        ``wrn.py``
                    sparselearning/models.py (WideResNet)
``vgg_cifar``       luuyin/Sup-tickets CIFAR/models/vgg.py        ``vgg.py``
``bert_encoder``    huggingface/transformers                      ``bert.py``
                    models/bert/modeling_bert.py (names)
==================  ============================================  ==============================

Usage::

    from sparse_rt import models
    models.names()                                   # ['bert_encoder', 'cifar_resnet', ...]
    net = models.create("wrn", depth=16, widen_factor=8, num_classes=100)
    net.load_state_dict(ckpt["state_dict"], strict=True)

New families register with the :func:`register` decorator::

    @register("my_net", input_shape=(3, 32, 32), keep_dense=("stem",))
    def my_net(*, num_classes: int = 10) -> nn.Module: ...
"""

# Importing the family modules fills the registry.
from . import bert, cifar_resnet, mobilenet, resnet, vgg, wrn  # noqa: E402,F401
from ._registry import ModelArgumentError, create, get_factory, input_shape, keep_dense, names, register

__all__ = ["create", "names", "register", "get_factory", "input_shape", "keep_dense", "ModelArgumentError"]

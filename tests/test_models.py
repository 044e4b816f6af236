"""Tests for sparse_rt.models (the built-in zoo).

The key names / shapes asserted below were confirmed against each codebase's public code:
  resnet18/50, mobilenet_v2 : pytorch/vision torchvision/models/{resnet,mobilenetv2}.py
  cifar_resnet              : facebookresearch/open_lth models/cifar_resnet.py
                              (same class in luuyin/Sup-tickets CIFAR/models/cifar_resnet.py)
  wrn                       : VITA-Group/FreeTickets sparselearning/models.py (WideResNet)
                              (same in luuyin/Sup-tickets CIFAR/sparselearning/models.py)
  vgg_cifar                 : luuyin/Sup-tickets CIFAR/models/vgg.py
  bert_encoder              : huggingface/transformers models/bert/modeling_bert.py
For cifar_resnet, wrn and vgg_cifar the full state dicts (keys + shapes) were also compared
one-to-one against the Sup-tickets / FreeTickets classes during development, with
load_state_dict(strict=True) and matching outputs.
Full-size models are built on the meta device (no memory, instant) for shape checks.
"""

import pytest
import torch
import torch.nn as nn

from sparse_rt import models

ALLOWED_PARAM_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding)

# name -> (kwargs for a small instance, input shape, output shape)
SMALL = {
    "resnet18": ({"num_classes": 10}, (2, 3, 64, 64), (2, 10)),
    "resnet34": ({}, (1, 3, 64, 64), (1, 1000)),
    "resnet50": ({"num_classes": 7}, (2, 3, 64, 64), (2, 7)),
    "mobilenet_v2": ({"num_classes": 10}, (2, 3, 64, 64), (2, 10)),
    "cifar_resnet": ({"depth": 20}, (2, 3, 32, 32), (2, 10)),
    "wrn": ({"depth": 16, "widen_factor": 2, "num_classes": 100}, (2, 3, 32, 32), (2, 100)),
    "vgg_cifar": ({"depth": 16}, (2, 3, 32, 32), (2, 10)),
    "bert_encoder": ({"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128},
                     (2, 7, 64), (2, 7, 64)),
}


def _shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _meta(name, **kw):
    with torch.device("meta"):
        return models.create(name, **kw)


def _bn_keys(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _assert_has(shapes, expected):
    for k, s in expected.items():
        assert k in shapes, f"missing key {k}"
        assert shapes[k] == s, f"{k}: {shapes[k]} != {s}"


# --------------------------------------------------------------------------- registry

def test_names():
    assert models.names() == sorted(SMALL)


def test_unknown_name():
    with pytest.raises(ValueError) as e:
        models.create("resnet9000")
    msg = str(e.value)
    assert "resnet9000" in msg
    for n in models.names():
        assert n in msg


def test_bad_kwargs():
    with pytest.raises(models.ModelArgumentError) as e:
        models.create("resnet18", depth=18)
    assert "depth" in str(e.value) and "num_classes" in str(e.value)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="6n\\+2"):
        models.create("cifar_resnet", depth=21)
    with pytest.raises(ValueError, match="6n\\+4"):
        models.create("wrn", depth=27)
    with pytest.raises(ValueError, match="depth"):
        models.create("vgg_cifar", depth=17)
    with pytest.raises(ValueError, match="multiple of heads"):
        models.create("bert_encoder", hidden=100, heads=12)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("mobilenet_v2", num_classes=0)


def test_register_duplicate_rejected():
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet18")(lambda: nn.Identity())


# ------------------------------------------------------------------- generic checks

@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shape_deterministic_and_traceable(name):
    torch.manual_seed(0)
    kw, in_shape, out_shape = SMALL[name]
    net = models.create(name, **kw).eval()
    x = torch.randn(in_shape)
    with torch.no_grad():
        y1 = net(x)
        y2 = net(x)
    assert tuple(y1.shape) == out_shape
    assert torch.isfinite(y1).all()
    assert torch.equal(y1, y2)
    # only swappable layer types hold parameters
    for mod_name, m in net.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            assert isinstance(m, ALLOWED_PARAM_MODULES), f"{mod_name}: {type(m).__name__}"
    # torch.fx can trace it and the trace computes the same thing
    gm = torch.fx.symbolic_trace(net)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), y1)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_strict_roundtrip(name):
    kw = SMALL[name][0]
    torch.manual_seed(0)
    a = models.create(name, **kw)
    torch.manual_seed(1)
    b = models.create(name, **kw)
    b.load_state_dict(a.state_dict(), strict=True)
    for key, tensor in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], tensor), key


# --------------------------------------------------------------- per-family layouts

def test_resnet18_keys():
    s = _shapes(_meta("resnet18"))
    assert len(s) == 122  # torchvision resnet18 state dict size
    _assert_has(s, {
        "conv1.weight": (64, 3, 7, 7),
        **_bn_keys("bn1", 64),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.running_var": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        **_bn_keys("layer2.0.downsample.1", 128),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    })
    assert "layer1.0.downsample.0.weight" not in s
    assert "layer2.1.downsample.0.weight" not in s


def test_resnet50_keys():
    s = _shapes(_meta("resnet50", num_classes=10))
    assert len(s) == 320  # torchvision resnet50 state dict size
    _assert_has(s, {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),  # channel change, stride 1
        "layer2.0.conv2.weight": (128, 128, 3, 3),        # v1.5: stride on the 3x3
        "layer3.5.bn3.num_batches_tracked": (),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (10, 2048),
    })
    net = _meta("resnet50")
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)


def test_mobilenet_v2_keys():
    s = _shapes(_meta("mobilenet_v2"))
    assert len(s) == 314  # torchvision mobilenet_v2 state dict size
    _assert_has(s, {
        "features.0.0.weight": (32, 3, 3, 3),
        **_bn_keys("features.0.1", 32),
        # t=1 block: dw unit, pw-linear conv, bn
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        **_bn_keys("features.1.conv.2", 16),
        # t=6 block: pw unit, dw unit, pw-linear conv, bn
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3),
        "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.running_mean": (24,),
        "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
        "classifier.1.bias": (1000,),
    })
    assert not any(k.startswith("features.19") for k in s)


def test_cifar_resnet_keys():
    s = _shapes(_meta("cifar_resnet", depth=20))
    assert len(s) == 128
    _assert_has(s, {
        "conv.weight": (16, 3, 3, 3),
        **_bn_keys("bn", 16),
        "blocks.0.conv1.weight": (16, 16, 3, 3),
        "blocks.3.conv1.weight": (32, 16, 3, 3),
        "blocks.3.shortcut.0.weight": (32, 16, 1, 1),
        **_bn_keys("blocks.3.shortcut.1", 32),
        "blocks.6.shortcut.0.weight": (64, 32, 1, 1),
        "blocks.8.bn2.weight": (64,),
        "fc.weight": (10, 64),
        "fc.bias": (10,),
    })
    assert not any(k.startswith("blocks.0.shortcut") for k in s)
    assert "blocks.8.conv1.weight" in s and "blocks.9.conv1.weight" not in s
    for depth, n_blocks in ((32, 15), (56, 27)):
        s = _shapes(_meta("cifar_resnet", depth=depth, num_classes=100))
        assert f"blocks.{n_blocks - 1}.conv2.weight" in s
        assert f"blocks.{n_blocks}.conv2.weight" not in s
        assert s["fc.weight"] == (100, 64)


def test_wrn_keys():
    s = _shapes(_meta("wrn", depth=28, widen_factor=10))
    _assert_has(s, {
        "conv1.weight": (16, 3, 3, 3),
        **_bn_keys("block1.layer.0.bn1", 16),
        "block1.layer.0.conv1.weight": (160, 16, 3, 3),
        "block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
        "block1.layer.3.conv2.weight": (160, 160, 3, 3),
        "block2.layer.0.convShortcut.weight": (320, 160, 1, 1),
        "block3.layer.0.conv1.weight": (640, 320, 3, 3),
        "block3.layer.3.bn2.running_var": (640,),
        **_bn_keys("bn1", 640),
        "fc.weight": (10, 640),
        "fc.bias": (10,),
    })
    assert "block1.layer.1.convShortcut.weight" not in s
    assert "block1.layer.4.conv1.weight" not in s  # (28 - 4) / 6 = 4 blocks per group
    assert len(s) == 12 * 12 + 3 + 1 + 5 + 2  # blocks, shortcuts, conv1, bn1, fc (= FreeTickets)
    # widen_factor 1: no shortcut conv in group 1
    s1 = _shapes(_meta("wrn", depth=16, widen_factor=1))
    assert "block1.layer.0.convShortcut.weight" not in s1
    assert "block2.layer.0.convShortcut.weight" in s1


def test_vgg_cifar_keys():
    s = _shapes(_meta("vgg_cifar", depth=19, num_classes=100))
    assert len(s) == 16 * 6 + 2  # 16 convs (no bias) + 16 BNs (5 entries) + classifier
    _assert_has(s, {
        "feature.0.weight": (64, 3, 3, 3),
        **_bn_keys("feature.1", 64),
        "feature.3.weight": (64, 64, 3, 3),
        "feature.7.weight": (128, 64, 3, 3),  # feature.6 is the first max-pool
        "feature.49.weight": (512, 512, 3, 3),
        "classifier.weight": (100, 512),
        "classifier.bias": (100,),
    })
    assert "feature.0.bias" not in s and "feature.6.weight" not in s
    s16 = _shapes(_meta("vgg_cifar", depth=16))
    assert len(s16) == 13 * 6 + 2
    assert s16["feature.40.weight"] == (512, 512, 3, 3)
    s_nobn = _shapes(_meta("vgg_cifar", depth=16, batchnorm=False))
    assert s_nobn["feature.2.weight"] == (64, 64, 3, 3) and len(s_nobn) == 13 + 2
    s_noaff = _shapes(_meta("vgg_cifar", depth=16, affine=False))
    assert "feature.1.weight" not in s_noaff and "feature.1.running_mean" in s_noaff


def test_bert_encoder_keys_base():
    s = _shapes(_meta("bert_encoder"))  # BERT-base defaults
    p = "encoder.layer.11."
    _assert_has(s, {
        "encoder.layer.0.attention.self.query.weight": (768, 768),
        "encoder.layer.0.attention.self.query.bias": (768,),
        "encoder.layer.0.attention.self.key.weight": (768, 768),
        "encoder.layer.0.attention.self.value.weight": (768, 768),
        "encoder.layer.0.attention.output.dense.weight": (768, 768),
        "encoder.layer.0.attention.output.LayerNorm.weight": (768,),
        "encoder.layer.0.attention.output.LayerNorm.bias": (768,),
        p + "intermediate.dense.weight": (3072, 768),
        p + "intermediate.dense.bias": (3072,),
        p + "output.dense.weight": (768, 3072),
        p + "output.LayerNorm.weight": (768,),
    })
    assert len(s) == 12 * 16
    assert not any(k.startswith(("embeddings.", "pooler.", "encoder.layer.12.")) for k in s)


def test_bert_encoder_embeddings_and_pooler():
    torch.manual_seed(0)
    net = models.create("bert_encoder", layers=1, hidden=32, heads=2, intermediate=64,
                        vocab_size=50, max_position=16, pooler=True).eval()
    s = _shapes(net)
    _assert_has(s, {
        "embeddings.word_embeddings.weight": (50, 32),
        "embeddings.position_embeddings.weight": (16, 32),
        "embeddings.token_type_embeddings.weight": (2, 32),
        "embeddings.LayerNorm.weight": (32,),
        "pooler.dense.weight": (32, 32),
    })
    assert "embeddings.position_ids" not in s  # non-persistent, as in transformers >= 4.31
    legacy = models.create("bert_encoder", layers=1, hidden=32, heads=2, intermediate=64,
                           vocab_size=50, max_position=16, legacy_position_ids=True)
    assert _shapes(legacy)["embeddings.position_ids"] == (1, 16)
    ids = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        h = net(net.embed(ids))
        pooled = net.pool(h)
    assert h.shape == (3, 9, 32) and pooled.shape == (3, 32)
    bare = models.create("bert_encoder", layers=1, hidden=32, heads=2, intermediate=64)
    with pytest.raises(RuntimeError, match="vocab_size"):
        bare.embed(ids)


def test_bert_attention_matches_reference_math():
    """One layer against a direct re-derivation of BERT's post-LN block."""
    torch.manual_seed(0)
    net = models.create("bert_encoder", layers=1, hidden=16, heads=4, intermediate=32).eval()
    L = net.encoder.layer[0]
    x = torch.randn(2, 5, 16)
    a = L.attention.self

    def split(t):
        return t.view(2, 5, 4, 4).permute(0, 2, 1, 3)

    q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
    p = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    ctx = (p @ v).permute(0, 2, 1, 3).reshape(2, 5, 16)
    h = L.attention.output.LayerNorm(L.attention.output.dense(ctx) + x)
    ff = L.output.dense(torch.nn.functional.gelu(L.intermediate.dense(h)))
    ref = L.output.LayerNorm(ff + h)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)


@pytest.mark.parametrize("name,kw", [("cifar_resnet", {}),
                                     ("wrn", {"depth": 16, "widen_factor": 1}),
                                     ("vgg_cifar", {"depth": 16})])
def test_log_softmax_option(name, kw):
    torch.manual_seed(0)
    a = models.create(name, **kw).eval()
    b = models.create(name, log_softmax=True, **kw).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), torch.log_softmax(a(x), dim=1))


@pytest.mark.parametrize("name, kwargs", [("cifar_resnet", {"depth": 6 * 357913941 + 2}),
                                          ("wrn", {"depth": 6 * 10**6 + 4}), ("bert_encoder", {"layers": 2**31})])
def test_depth_beyond_any_real_model_is_refused_before_building(name, kwargs):
    """Such a depth would make the factory build modules one by one for hours (a hang, not an error)."""
    with pytest.raises(ValueError, match=r"must be an int <= 10000"):
        models.create(name, **kwargs)

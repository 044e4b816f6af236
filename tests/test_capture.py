"""SparseModel.capture(): forwards recorded once and replayed from C++ (sparse_rt.capture, OpTape) give
the eager forward's outputs bit for bit, and run eagerly wherever a replay could not stand in."""

import copy
import pickle

import pytest
import torch
from helpers import requires_compiled_ops
from torch import nn

import sparse_rt
from sparse_rt import capture, models
from sparse_rt.nn import SparseLinear

pytestmark = requires_compiled_ops


def _pruned(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    base = models.create(name, **kwargs).eval()
    return sparse_rt.magnitude_prune(base, 0.9, exclude=models.keep_dense(name)).eval()


def _fused(pruned, example):
    model = sparse_rt.sparsify(pruned, example_inputs=(example,)).eval()
    model.fuse()
    return model


def _states(model):
    return sorted(model.capture_report().values())


def _eager_and_captured(dense, shapes, seed=0):
    """A SparseModel of `dense` with random masks of 10% for the weights named in `shapes`, and a copy
    of it capturing."""
    torch.manual_seed(seed)
    eager = sparse_rt.sparsify(dense.eval(), masks={name: torch.rand(shape) < 0.1 for name, shape in shapes.items()})
    return eager.eval(), copy.deepcopy(eager).eval().capture()


def _calls(model, x, times):
    for _ in range(times):
        y = model(x)
    return y


@pytest.mark.parametrize("name, shape, batch", [
    ("bert_encoder", None, 1),
    ("resnet18", (3, 64, 64), 2),
    ("cifar_resnet", None, 3),
])
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_replay_equals_eager_bit_for_bit(name, shape, batch, mode):
    kwargs = {"layers": 2} if name == "bert_encoder" else {}
    pruned = _pruned(name, **kwargs)
    shape = shape or models.input_shape(name)
    x = torch.randn(batch, *shape)
    eager = _fused(pruned, x[:1])
    captured = copy.deepcopy(eager).capture()
    with mode():
        expected = eager(x)
        for _ in range(4):
            assert torch.equal(captured(x), expected)
    [state] = _states(captured)
    assert state.startswith("replays ") and int(state.split()[1]) > 0


def test_trusted_packings_replay_their_own_recording():
    pruned = _pruned("bert_encoder", layers=2)
    x = torch.randn(1, *models.input_shape("bert_encoder"))
    eager = _fused(pruned, x)
    captured = copy.deepcopy(eager).capture()
    with torch.inference_mode(), sparse_rt.ops.trusted_packings():
        expected = eager(x)
        assert torch.equal(_calls(captured, x, 4), expected)
    with torch.inference_mode():
        assert torch.equal(_calls(captured, x, 3), eager(x))
    states = _states(captured)  # two signatures: trusted packings or not
    assert len(states) == 2 and all(s.startswith("replays") for s in states)


def test_first_call_eager_second_records_third_replays():
    model = _fused(_pruned("cifar_resnet"), torch.randn(1, 3, 32, 32)).capture()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model(x)
        assert _states(model) == ["records on its next call"]
        model(x)
        assert _states(model)[0].startswith("replays")
        model(torch.randn(5, 3, 32, 32))  # another signature: its own entry
        assert len(model.capture_report()) == 2


def test_gradients_exports_and_keyword_calls_run_eagerly():
    model = _fused(_pruned("cifar_resnet"), torch.randn(1, 3, 32, 32)).capture()
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        model(x)  # gradients enabled
    assert model.capture_report() == {}
    with torch.no_grad():
        for _ in range(3):
            model(x.to(torch.float64).float().requires_grad_(False))
        assert len(model.capture_report()) == 1


def test_in_place_weight_change_is_seen_and_recorded_again():
    eager = _fused(_pruned("bert_encoder", layers=2), torch.randn(1, 128, 768))
    captured = copy.deepcopy(eager).capture()
    x = torch.randn(1, 128, 768)
    with torch.inference_mode():
        _calls(captured, x, 3)
    for model in (eager, captured):
        layer = next(m for m in model.modules() if isinstance(m, SparseLinear))
        with torch.no_grad():
            layer.values.mul_(2)  # PyTorch counts it: a new packing, and the tape is stale
    with torch.inference_mode():
        expected = eager(x)
        for _ in range(4):
            assert torch.equal(captured(x), expected)
    assert _states(captured)[0].startswith("replays")


def test_repack_drops_the_recordings():
    model = _fused(_pruned("bert_encoder", layers=1), torch.randn(1, 128, 768)).capture()
    x = torch.randn(1, 128, 768)
    with torch.inference_mode():
        expected = _calls(model, x, 3)
        for layer in model.modules():
            if isinstance(layer, SparseLinear):
                layer.repack()
        assert torch.equal(model(x), expected)  # eager: the generation moved


@pytest.mark.parametrize("change", ["load_state_dict", "to", "fuse", "store_weights", "module", "train"])
def test_model_changes_drop_the_recordings(change):
    pruned = _pruned("cifar_resnet")
    x = torch.randn(2, 3, 32, 32)
    model = sparse_rt.sparsify(pruned, example_inputs=(x[:1],)).eval().capture()
    with torch.inference_mode():
        _calls(model, x, 3)
    assert len(model.capture_report()) == 1
    if change == "load_state_dict":
        state = {k: v * 2 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(state, assign=True)
    elif change == "to":
        model.to(torch.float64).to(torch.float32)
    elif change == "fuse":
        model.fuse()
    elif change == "store_weights":
        model.store_weights(torch.bfloat16)
    elif change == "module":
        model.module = copy.deepcopy(model.module)
    else:
        model.train().eval()
    with torch.inference_mode():
        model(x)  # the recording is gone: this call runs eagerly, as a first one
    assert _states(model) == ["records on its next call"]


class _Branches(nn.Module):
    """A forward whose Python reads a tensor's value."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        y = self.fc(x)
        return y * 2 if y.sum() > 0 else -y


def test_a_forward_reading_values_stays_eager():
    model = sparse_rt.sparsify(_Branches(), masks={"fc.weight": torch.rand(64, 64) < 0.1}).eval().capture()
    with torch.inference_mode():
        for sign in (1, 1, 1, -1, -1, 1):
            x = sign * torch.ones(4, 64)
            assert torch.equal(model(x), _Branches.forward(model.module, x))
    [state] = _states(model)
    assert "steer Python" in state or "branch on" in state


class _Arithmetic(nn.Module):
    """Python numbers for tensor arguments (y * 0.5 + 1), or an empty list argument (torch.flip(x, []))."""

    def __init__(self, numbers):
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.numbers = numbers

    def forward(self, x):
        return self.fc(x) * 0.5 + 1 if self.numbers else self.fc(torch.flip(x, []))


@pytest.mark.parametrize("numbers", [True, False])
def test_numbers_for_tensor_arguments_run_eagerly_and_empty_lists_replay(numbers):
    eager, captured = _eager_and_captured(_Arithmetic(numbers), {"fc.weight": (64, 64)})
    x = torch.randn(4, 64)
    with torch.inference_mode():
        expected = eager(x)
        for _ in range(4):
            assert torch.equal(captured(x), expected)
    [state] = _states(captured)
    assert ("a number for its tensor argument" in state) if numbers else state.startswith("replays")


class _Outputs(nn.Module):
    """Several outputs in a structure, one made by torch.cat of two intermediates (a list of slots)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 48)
        self.b = nn.Linear(32, 16)

    def forward(self, x, y):
        a, b = self.a(x), self.b(y).relu()
        return {"joined": torch.cat([a, b], dim=1), "pair": (a.sum(1), b)}


def test_structured_outputs_and_lists_of_intermediates():
    eager, captured = _eager_and_captured(_Outputs(), {"a.weight": (48, 32), "b.weight": (16, 32)})
    x, y = torch.randn(5, 32), torch.randn(5, 32)
    with torch.inference_mode():
        expected = eager(x, y)
        for _ in range(3):
            out = captured(x, y)
        assert torch.equal(out["joined"], expected["joined"])
        assert torch.equal(out["pair"][0], expected["pair"][0]) and torch.equal(out["pair"][1], expected["pair"][1])
        captured(x, y=y)  # keyword arguments: eager, not recorded
    assert _states(captured)[0].startswith("replays")


class _Attention(nn.Module):
    """An unfused attention block: PyTorch's scaled_dot_product_attention between sparse projections."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(64, 192)
        self.out = nn.Linear(64, 64)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 4, 16)).permute(2, 0, 3, 1, 4)
        return self.out(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


def test_pytorch_attention_replays():
    eager, captured = _eager_and_captured(_Attention(), {"qkv.weight": (192, 64), "out.weight": (64, 64)})
    x = torch.randn(2, 10, 64)
    with torch.inference_mode():
        assert torch.equal(_calls(captured, x, 3), eager(x))
    assert _states(captured)[0].startswith("replays")


@pytest.mark.parametrize("fused", [False, True])
def test_pickled_and_copied_models_record_again(fused):
    x = torch.randn(2, 3, 32, 32)
    model = sparse_rt.sparsify(_pruned("cifar_resnet"), example_inputs=(x[:1],)).eval()
    if fused:
        model.fuse()
    model.capture()
    with torch.inference_mode():
        expected = _calls(model, x, 3)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert copied.capture_report() == {}
        with torch.inference_mode():
            assert torch.equal(_calls(copied, x, 3), expected)
        assert _states(copied)[0].startswith("replays")
    model.capture(False)
    assert model.capture_report() == {}


def test_signatures_are_bounded():
    model = _fused(_pruned("cifar_resnet"), torch.randn(1, 3, 32, 32)).capture()
    with torch.inference_mode():
        for batch in range(1, capture.MAX_SIGNATURES + 4):
            model(torch.randn(batch, 3, 32, 32))
    assert len(model.capture_report()) == capture.MAX_SIGNATURES


def test_op_tape_rejects_malformed_recordings():
    tape = torch.classes.sparse_rt.OpTape(1)
    with pytest.raises(RuntimeError, match="no op aten::no_such_op"):
        tape.step("aten::no_such_op", "")
    with pytest.raises(RuntimeError, match="an argument outside a step"):
        tape.slot(0)
    tape.step("aten::add", "Tensor")
    with pytest.raises(RuntimeError, match="slot 3 is not filled"):
        tape.slot(3)
    tape.slot(0)
    with pytest.raises(RuntimeError, match="takes 3 arguments, got 1"):
        tape.end_step(1)
    tape.slot(0)
    tape.default_value()
    with pytest.raises(RuntimeError, match="takes 3 arguments, got more"):
        tape.constant(1)
    assert tape.end_step(1) == 1
    with pytest.raises(RuntimeError, match="run before finish"):
        tape.run([torch.ones(2)])
    tape.finish([1])
    tape.watch([])
    assert torch.equal(tape.run([torch.ones(2)])[0], torch.full((2,), 2.0))
    with pytest.raises(RuntimeError, match="recorded with 1 inputs, run with 2"):
        tape.run([torch.ones(2), torch.ones(2)])

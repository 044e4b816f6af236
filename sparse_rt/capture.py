"""A forward's ops recorded once and replayed from C++ (SparseModel.capture).

Between two ops of an eager forward runs Python: module calls, the fused functions' checks, the view
ops' wrappers. On a 2-core CPU that costs milliseconds per BERT-base forward at batch 1 while the
other core waits (README, "Replays from C++" under "Python API"). A capture records, for one input signature
(shapes, strides, dtypes, devices of the positional tensor inputs, thread count, trusted packings),
the ops the forward called and where each argument came from: an input, an earlier op's output or a
constant (a weight, a packing, a shape). Later calls with that signature replay the ops through the
dispatcher from C++ (OpTape, csrc/torch/op_tape.cpp): the same ops on the same arguments, so the same
outputs bit for bit. Python values the forward computed from anything but tensor values (a setting,
a counter) are those of the recording.

What a replay cannot see is refused, and the forward runs eagerly: gradients wanted, an ONNX export,
tracing or compilation, inputs that are not plain tensors, keyword arguments, and forwards whose Python
read a tensor's values (an op returning a number, or one whose output shape depends on the data,
may steer Python's control flow). Weights changed in place (PyTorch counts the change) are seen:
the next call runs eagerly, packs again where needed and records anew.
"""

import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import ops
from .nn.packing import packing_generation

# Ops whose non-tensor result depends on shapes and settings only (composite ops ask them).
_SHAPE_ONLY_RESULTS = frozenset({"aten::_fused_sdp_choice", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
                                 "aten::sym_storage_offset", "aten::is_same_size"})
# Results a data-dependent branch may read: never replayed.
_DATA_DEPENDENT_TAGS = (torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output)
_TYPED_CONSTANTS = ((torch.dtype, "dtype"), (torch.memory_format, "memory_format"), (torch.layout, "layout"),
                    (torch.device, "device"))
# Signatures kept per model, the most recently recorded first out.
MAX_SIGNATURES = 8


class CaptureRefused(Exception):
    """A forward a replay cannot stand in for; the message says why."""


@dataclass
class Replay:
    """A recorded forward: the tape, the structure of its outputs and the packing generation it saw."""

    tape: Any
    output_spec: Any
    generation: int

    def __call__(self, inputs):
        """The forward's outputs for `inputs`, or None where a weight changed since the recording."""
        if self.generation != packing_generation():
            return None
        outputs = self.tape.run(list(inputs))
        return None if outputs is None else tree_unflatten(outputs, self.output_spec)


class _Recorder(TorchDispatchMode):
    """Records each op called under it into an OpTape, numbering the tensors it sees: the inputs
    first, then each op's returned tensors in order; any other tensor is a constant."""

    def __init__(self, inputs):
        super().__init__()
        self.tape = torch.classes.sparse_rt.OpTape(len(inputs))
        self.slots = {id(t): i for i, t in enumerate(inputs)}  # the caller keeps the inputs alive
        self.constants = []
        self.finalizers = []
        self.refused: Optional[str] = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.refused is None:
            try:
                self._record(func, args, kwargs, out)
            except (CaptureRefused, RuntimeError) as e:
                self.refused = f"{func}: {e}"
        return out

    def _record(self, func, args, kwargs, out):
        schema = func._schema
        if func is torch.ops.sparse_rt.pack_csr.default:
            raise CaptureRefused("the forward packed a weight (the next call records without it)")
        if any(tag in func.tags for tag in _DATA_DEPENDENT_TAGS):
            raise CaptureRefused("its output's shape or values steer Python")
        self.tape.step(schema.name, schema.overload_name)
        for i, argument in enumerate(schema.arguments):
            if i < len(args) and not argument.kwarg_only:
                self._argument(args[i], argument)
            elif argument.name in kwargs:
                self._argument(kwargs[argument.name], argument)
            else:
                self.tape.default_value()
        returned = [t for r in (out if isinstance(out, (tuple, list)) else (out,))
                    for t in (r if isinstance(r, (tuple, list)) else (r,))]
        tensors = [t for t in returned if isinstance(t, torch.Tensor)]
        if len(tensors) != len(returned) and schema.name not in _SHAPE_ONLY_RESULTS:
            raise CaptureRefused("it returns a value Python may branch on")
        first = self.tape.end_step(len(tensors))
        for i, t in enumerate(tensors):
            self.slots[id(t)] = first + i
            # A dead tensor's id may name a new one, made outside the ops (a constant): forget it.
            self.finalizers.append(weakref.finalize(t, self._forget, id(t), first + i))

    def _forget(self, key, slot):
        if self.slots.get(key) == slot:
            self.slots.pop(key)

    def _argument(self, value, argument):
        if isinstance(value, torch.Tensor):
            slot = self.slots.get(id(value))
            if slot is not None:
                self.tape.slot(slot)
            else:
                self.constants.append(value)
                self.tape.constant(value)
            return
        if (isinstance(value, (list, tuple)) and "Tensor" in str(argument.type)
                and all(v is None or isinstance(v, torch.Tensor) for v in value)):
            slots = [self.slots.get(id(v), -1) if isinstance(v, torch.Tensor) else -1 for v in value]
            elements = [None if s >= 0 else v for v, s in zip(value, slots)]
            self.constants.extend(v for v in elements if isinstance(v, torch.Tensor))
            self.tape.list(elements, slots)
            return
        for kind, method in _TYPED_CONSTANTS:
            if isinstance(value, kind):
                getattr(self.tape, method)(value)
                return
        if isinstance(value, (bool, int, float)) and str(argument.type) in ("Tensor", "Optional[Tensor]"):
            # A Python number that PyTorch wraps into a tensor for the kernel (y * 0.5): a replay would
            # hand the kernel the bare number.
            raise CaptureRefused(f"a number for its tensor argument '{argument.name}' cannot be replayed")
        if value is None or isinstance(value, (bool, int, float, str)):
            self.tape.constant(value)
        elif isinstance(value, (list, tuple)) and not value:
            self.tape.empty_list()
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float)) for v in value):
            self.tape.constant(list(value))
        else:
            raise CaptureRefused(f"an argument of type {type(value).__name__} cannot be replayed")


def record(forward, inputs):
    """Runs forward(*inputs) recording its ops. Returns (outputs, Replay), or (outputs, the reason
    why the forward cannot be replayed)."""
    generation = packing_generation()
    recorder = _Recorder(inputs)
    try:
        with recorder:
            outputs = forward(*inputs)
    finally:
        for finalizer in recorder.finalizers:
            finalizer.detach()
    if recorder.refused is not None:
        return outputs, recorder.refused
    leaves, spec = tree_flatten(outputs)
    slots = [recorder.slots.get(id(t)) if isinstance(t, torch.Tensor) else None for t in leaves]
    if any(s is None for s in slots):
        return outputs, "the forward returns something no op made (a constant or a non-tensor)"
    recorder.tape.finish(slots)
    recorder.tape.watch(recorder.constants)
    return outputs, Replay(recorder.tape, spec, generation)


def signature(inputs):
    """What a recording depends on besides the model: None where a replay cannot stand in for the
    forward at all (see the module's docstring)."""
    if (torch.is_grad_enabled() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or not ops.HAS_COMPILED_OPS):
        return None
    if not all(type(t) is torch.Tensor for t in inputs):
        return None
    return (tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in inputs),
            torch.get_num_threads(), ops.trusted_packings_enabled())


class Captures:
    """A model's replays by signature. The first call of a signature runs eagerly (packings are made
    then), the second records, later ones replay; a refused signature stays eager."""

    def __init__(self, module):
        self.clear(module)

    def clear(self, module):
        """Forgets every recording; `module` is the one they are of (a new one clears them again)."""
        self.module = module
        self.entries = {}  # signature -> Replay, the reason it is refused, or None (record next)

    def __call__(self, forward, inputs):
        key = signature(inputs)
        if key is None:
            return forward(*inputs)
        if key not in self.entries:
            self._add(key, None)
            return forward(*inputs)
        entry = self.entries[key]
        if isinstance(entry, Replay):
            outputs = entry(inputs)
            if outputs is not None:
                return outputs
        elif isinstance(entry, str):
            return forward(*inputs)
        outputs, entry = record(forward, inputs)
        # Packing during the recording is transient: the next call records again.
        self.entries[key] = None if isinstance(entry, str) and "packed a weight" in entry else entry
        return outputs

    def _add(self, key, entry):
        if len(self.entries) >= MAX_SIGNATURES:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = entry

    def report(self):
        """{signature: "replays N ops" or why it runs eagerly} for the signatures seen."""
        return {key: (f"replays {e.tape.steps()} ops" if isinstance(e, Replay)
                      else e if isinstance(e, str) else "records on its next call")
                for key, e in self.entries.items()}

    def __getstate__(self):
        return {"module": None, "entries": {}}  # tapes hold C++ objects: a copy records again

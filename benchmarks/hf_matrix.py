"""The drop-in matrix: Hugging Face architectures, built from small configs with random weights
(no hub downloads), pruned 90% with torch.nn.utils.prune (global magnitude over every Linear,
Conv2d and Conv1D weight) with the prune hooks kept in place and after prune.remove, each taken
through every step a user takes:

    sparsify -> compare -> bf16 -> .srt round trip into a fresh instance -> ONNX sparse flavour
    (sparse_rt.onnx.session) -> ONNX portable flavour (stock onnxruntime) -> torch.compile ->
    torch.export

Every step's output is compared with the pruned model's (relative error of the first output);
a step that raises is recorded with its exception. Writes benchmarks/results/hf-matrix-DATE.json
and prints the table the README shows (--markdown for the table alone).

    python benchmarks/hf_matrix.py [--models gpt2,t5] [--markdown]

torchvision and timm models are not in it: the registry's torchvision is a CUDA build that
cannot import against the CPU torch this project pins, and timm requires torchvision.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import traceback
import warnings

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sparse_rt  # noqa: E402
import sparse_rt.onnx  # noqa: E402,F401  (the ONNX steps)
from sparse_rt.machine import machine_info  # noqa: E402

STEPS = ("sparsify", "bf16", "srt", "onnx sparse", "onnx portable", "torch.compile", "torch.export")
TOLERANCE = {"bf16": 5e-2}  # relative error of the first output; 1e-4 elsewhere
DEFAULT_TOLERANCE = 1e-4


def _models():
    """{name: (build() -> fresh model in eval mode, example inputs as a tuple)}"""
    import transformers as t

    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    small = dict(vocab_size=100)
    return {
        "bert": (lambda: t.BertModel(t.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=128, **small)), (ids,)),
        "distilbert": (lambda: t.DistilBertModel(t.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                                    **small)), (ids,)),
        "vit": (lambda: t.ViTModel(t.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=128, image_size=32, patch_size=8)), (image,)),
        "gpt2": (lambda: t.GPT2LMHeadModel(t.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32,
                                                        bos_token_id=0, eos_token_id=0, **small)), (ids,)),
        "t5": (lambda: _EncoderDecoder(t.T5Model(t.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                                                            decoder_start_token_id=0, pad_token_id=0, **small))),
               (ids,)),
    }


class _EncoderDecoder(nn.Module):
    """T5 fed the same ids as encoder and decoder input, so every model takes one tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, decoder_input_ids=ids)


class _FirstOutput(nn.Module):
    """The model's first output as a plain tensor (ONNX, torch.export and comparisons)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        out = self.model(*args)
        return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values())) if isinstance(out, dict) else out


def _prune(model, remove):
    from torch.nn.utils import prune

    layers = [(m, "weight") for m in model.modules()
              if type(m) in (nn.Linear, nn.Conv2d) or type(m).__name__ == "Conv1D"]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.9)
    if remove:
        for m, name in layers:
            prune.remove(m, name)
    return model


def _rel_err(got, expected):
    got, expected = got.double(), expected.double()
    return ((got - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def _first(model, args):
    with torch.no_grad():
        return _FirstOutput(model)(*args)


def _run_steps(build, args, remove, folder):
    torch.manual_seed(0)
    dense = _prune(build().eval(), remove)
    expected = _first(dense, args)
    results, sparse = {}, None

    def step(name, run):
        try:
            got = run()
            err = _rel_err(got, expected)
            ok = err <= TOLERANCE.get(name, DEFAULT_TOLERANCE)
            results[name] = {"ok": ok, "rel_err": err}
        except Exception as e:  # noqa: BLE001  (the matrix records whatever fails)
            first_line = str(e).splitlines()[0][:400] if str(e) else ""
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {first_line}",
                             "traceback": traceback.format_exc(limit=-4)}

    def sparsify():
        nonlocal sparse
        sparse = sparse_rt.sparsify(dense, min_sparsity=0.5)
        return _first(sparse, args)

    def bf16():
        cast = lambda a: a.to(torch.bfloat16) if a.is_floating_point() else a
        return _first(sparse_rt.sparsify(dense, min_sparsity=0.5).to(torch.bfloat16), tuple(map(cast, args))).float()

    def srt():
        sparse.save(os.path.join(folder, "m.srt"))
        return _first(sparse_rt.load(os.path.join(folder, "m.srt"), arch=build().eval()), args)

    def onnx(flavor):
        import numpy as np
        import onnxruntime as ort

        path = os.path.join(folder, f"m-{flavor}.onnx")
        sparse_rt.onnx.export(_FirstOutput(sparse.module), path, args, flavor=flavor)
        session = sparse_rt.onnx.session(path) if flavor == "sparse" else ort.InferenceSession(path)
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
        return torch.from_numpy(np.asarray(session.run(None, feed)[0]))

    def compiled():
        torch._dynamo.reset()
        with torch.no_grad():
            return torch.compile(_FirstOutput(sparse.module))(*args)

    def exported():
        program = torch.export.export(_FirstOutput(sparse.module), args)
        with torch.no_grad():
            return program.module()(*args)

    step("sparsify", sparsify)
    if sparse is None:
        return results
    step("bf16", bf16)
    step("srt", srt)
    step("onnx sparse", lambda: onnx("sparse"))
    step("onnx portable", lambda: onnx("portable"))
    step("torch.compile", compiled)
    step("torch.export", exported)
    return results


def _cell(result):
    if result is None:
        return "-"
    if result["ok"]:
        return f"ok ({result['rel_err']:.0e})"
    return f"**{result['error'].split(':')[0]}**" if "error" in result else f"**differs ({result['rel_err']:.1e})**"


def markdown(report):
    lines = ["| model | prune hooks | " + " | ".join(STEPS) + " |", "|" + " --- |" * (len(STEPS) + 2)]
    for row in report["rows"]:
        cells = [_cell(row["steps"].get(s)) for s in STEPS]
        lines.append(f"| {row['model']} | {row['hooks']} | " + " | ".join(cells) + " |")
    failures = {}  # what failed -> {(model, step): [prune hooks]}, each failure once
    for row in report["rows"]:
        for step, result in row["steps"].items():
            if not result["ok"]:
                what = result.get("error") or f"differs: relative error {result['rel_err']:.1e}"
                failures.setdefault(what, {}).setdefault((row["model"], step), []).append(row["hooks"])
    if failures:
        lines += ["", "What fails:"]
        for what, where in failures.items():
            places = "; ".join(f"{model} {step} (hooks {', '.join(hooks)})" for (model, step), hooks in where.items())
            lines.append(f"- {places}: {what}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated subset (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the README table only")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                 f"hf-matrix-{datetime.date.today().isoformat()}.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    models = _models()
    chosen = args.models.split(",") if args.models else list(models)
    rows = []
    for name in chosen:
        build, inputs = models[name]
        for hooks in ("kept", "removed"):
            print(f"{name}, prune hooks {hooks} ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as folder:
                steps = _run_steps(build, inputs, hooks == "removed", folder)
            rows.append({"model": name, "hooks": hooks, "steps": steps})
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "transformers": transformers.__version__, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(markdown(report))
    if not args.markdown:
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

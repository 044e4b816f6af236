"""Hugging Face transformers architectures, built from small configs with random weights (no hub
downloads), pruned as their users prune them: torch.nn.utils.prune, masks left in place."""

import warnings

import pytest
import torch
from helpers import rel_err
from torch import nn

import sparse_rt

transformers = pytest.importorskip("transformers")


def _prune_globally(model, amount=0.9, include=lambda name, layer: True):
    """Global magnitude pruning of every Linear / Conv2d / Conv1D weight, hooks left in place."""
    from torch.nn.utils import prune

    layers = [(layer, "weight") for name, layer in model.named_modules()
              if (type(layer) in (nn.Linear, nn.Conv2d) or type(layer).__name__ == "Conv1D") and include(name, layer)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    return model


def _gpt2_config():
    return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                   bos_token_id=0, eos_token_id=0)


def _gpt2(**prune_options):
    torch.manual_seed(0)
    return _prune_globally(transformers.GPT2LMHeadModel(_gpt2_config()).eval(), **prune_options)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))


def test_gpt2_conv1d_layers_convert_and_the_file_loads_into_a_fresh_instance(tmp_path):
    """Before: 48 of GPT-2's 49 weight layers (transformers' Conv1D) were not considered, and the
    tied lm_head / wte made the .srt save fail ("Some tensors share memory")."""
    model = _gpt2()  # lm_head pruned too: through the tie its weight_orig is wte's weight
    sparse = sparse_rt.sparsify(model, min_sparsity=0.5)
    expected = _logits(model, IDS)
    assert rel_err(_logits(sparse, IDS), expected) < 1e-5
    rows = {r.name: r for r in sparse.summary()}
    assert rows["transformer.h.0.mlp.c_fc"].format == "csr" and rows["transformer.h.0.mlp.c_fc"].shape == (256, 64)
    assert len([r for r in rows.values() if r.format == "csr"]) == 9  # 8 Conv1D + lm_head
    # The mask on lm_head did not prune the embedding it was tied to.
    assert torch.equal(sparse.module.transformer.wte.weight, model.transformer.wte.weight)
    sparse.save(tmp_path / "gpt2.srt")
    loaded = sparse_rt.load(tmp_path / "gpt2.srt", arch=transformers.GPT2LMHeadModel(_gpt2_config()).eval())
    assert rel_err(_logits(loaded, IDS), expected) < 1e-5


def test_tied_weights_are_stored_once_and_tied_again_on_load(tmp_path):
    model = _gpt2(include=lambda name, layer: name != "lm_head")
    sparse = sparse_rt.sparsify(model, min_sparsity=0.5)
    assert sparse.module.lm_head.weight is sparse.module.transformer.wte.weight
    sparse.save(tmp_path / "gpt2.srt")
    assert sparse_rt.io.srt.read_manifest(tmp_path / "gpt2.srt")["ties"] == {"lm_head.weight": "transformer.wte.weight"}
    loaded = sparse_rt.load(tmp_path / "gpt2.srt", arch=transformers.GPT2LMHeadModel(_gpt2_config()).eval())
    assert loaded.module.lm_head.weight is loaded.module.transformer.wte.weight
    assert rel_err(_logits(loaded, IDS), _logits(model, IDS)) < 1e-5


def test_checkpoint_with_a_mask_on_one_name_of_a_tie_converts_to_the_same_model(tmp_path):
    """Before: the masked lm_head.weight was loaded into the tensor it shares with wte, so the
    embedding was pruned too: output off by 0.15 relative, silently."""
    model = _gpt2()
    torch.save(model.state_dict(), tmp_path / "masks_in_place.pt")  # lm_head.weight_orig / weight_mask
    converted = sparse_rt.SparseModel.from_checkpoint(tmp_path / "masks_in_place.pt",
                                                      arch=transformers.GPT2LMHeadModel(_gpt2_config()).eval())
    assert rel_err(_logits(converted, IDS), _logits(model, IDS)) < 1e-5
    assert any("untied" in note and "lm_head.weight (was transformer.wte.weight)" in note
               for note in converted.source["notes"])


def test_models_reading_weight_dtype_run_after_conversion(tmp_path):
    """HF ViT reads `projection.weight.dtype`, T5 `wo.weight.dtype`: before, AttributeError."""
    torch.manual_seed(0)
    vit = _prune_globally(transformers.ViTModel(transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
        patch_size=8)).eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(sparse_rt.sparsify(vit)(x).last_hidden_state, vit(x).last_hidden_state) < 1e-5
    config = transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=100,
                                   decoder_start_token_id=0, pad_token_id=0)
    t5 = _prune_globally(transformers.T5Model(config).eval())
    sparse = sparse_rt.sparsify(t5)
    ids = IDS[:, :10]
    with torch.no_grad():
        expected = t5(input_ids=ids, decoder_input_ids=ids).last_hidden_state
        assert rel_err(sparse(input_ids=ids, decoder_input_ids=ids).last_hidden_state, expected) < 1e-5
    sparse.save(tmp_path / "t5.srt")  # shared embeddings: before, a bare RuntimeError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = sparse_rt.load(tmp_path / "t5.srt", arch=transformers.T5Model(config).eval())
    with torch.no_grad():
        assert rel_err(loaded(input_ids=ids, decoder_input_ids=ids).last_hidden_state, expected) < 1e-5


@pytest.mark.parametrize("max_shard_size", ["100MB", "40KB"])  # one model.safetensors, or 8 shards and an index
def test_save_pretrained_folder_converts_with_the_architecture_from_its_config(tmp_path, max_shard_size):
    model = _pruned_and_baked()
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder, max_shard_size=max_shard_size)  # leaves out the tied lm_head.weight
    expected = _logits(model, IDS)
    for arch in ("transformers:AutoModelForCausalLM", "transformers:GPT2LMHeadModel"):
        converted = sparse_rt.SparseModel.from_checkpoint(folder, arch=arch)
        assert rel_err(_logits(converted, IDS), expected) < 1e-5
        assert converted.arch_spec["kwargs"]["config"]["model_type"] == "gpt2"
    assert "tied parameters stored under one name: lm_head.weight (from transformer.wte.weight)" in \
        converted.source["notes"]
    converted.save(tmp_path / "gpt2.srt")  # the config is recorded: the file rebuilds its architecture
    assert rel_err(_logits(sparse_rt.load(tmp_path / "gpt2.srt", trust_arch=True), IDS), expected) < 1e-5


def _pruned_and_baked():
    from torch.nn.utils import prune

    model = _gpt2(include=lambda name, layer: name != "lm_head")
    for layer in model.modules():
        if prune.is_pruned(layer) and hasattr(layer, "weight_orig"):
            prune.remove(layer, "weight")  # the zeros are the masks, as save_pretrained users keep them
    return model


def test_cli_converts_a_save_pretrained_folder(tmp_path, capsys):
    from sparse_rt.cli import main

    model = _pruned_and_baked()
    model.save_pretrained(tmp_path / "gpt2")
    assert main(["convert", str(tmp_path / "gpt2"), "--arch", "transformers:AutoModelForCausalLM",
                 "-o", str(tmp_path / "gpt2.srt")]) == 0, capsys.readouterr().err
    assert "hugging face folder: model.safetensors" in capsys.readouterr().out
    assert rel_err(_logits(sparse_rt.load(tmp_path / "gpt2.srt", trust_arch=True), IDS), _logits(model, IDS)) < 1e-5


@pytest.mark.slow  # four ONNX exports
def test_onnx_vit_portable_exports_and_t5_fails_naming_its_own_code(tmp_path):
    """Before: HF ViT's portable flavour failed (its forward reads projection.weight.dtype), and
    T5 failed deep inside the exporter with no word on whose code it was."""
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    import sparse_rt.onnx

    torch.manual_seed(0)
    vit = _prune_globally(transformers.ViTModel(transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
        patch_size=8)).eval())
    x = torch.randn(2, 3, 32, 32)
    sparse = sparse_rt.sparsify(vit)
    first = _First(sparse.module)
    sparse_rt.onnx.export(first, tmp_path / "vit.onnx", (x,), flavor="portable")
    got = ort.InferenceSession(str(tmp_path / "vit.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert rel_err(torch.from_numpy(got), first(x)) < 1e-5
    config = transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=100,
                                   decoder_start_token_id=0, pad_token_id=0)
    t5 = _First(sparse_rt.sparsify(_prune_globally(transformers.T5Model(config).eval())).module, decoder=True)
    with pytest.raises(sparse_rt.onnx.ModelNotExportableError,
                       match=r"fails on this model's own code, not on sparse_rt's layers .* at .*modeling_t5.py:\d+: "):
        sparse_rt.onnx.export(t5, tmp_path / "t5.onnx", (IDS,), flavor="sparse")


class _First(nn.Module):
    def __init__(self, model, decoder=False):
        super().__init__()
        self.model, self.decoder = model, decoder

    def forward(self, x):
        return self.model(x, decoder_input_ids=x)[0] if self.decoder else self.model(x)[0]


def test_cli_inspects_benches_and_exports_token_input_models(tmp_path, capsys):
    """Before: inspect / bench / export built float inputs, so BERT-style models failed with a
    traceback; bench had no --trust-arch."""
    from sparse_rt.cli import main

    _pruned_and_baked().save_pretrained(tmp_path / "gpt2")
    srt = str(tmp_path / "gpt2.srt")
    tokens = ["--input-shape", "16", "--tokens", "100"]
    assert main(["convert", str(tmp_path / "gpt2"), "--arch", "transformers:AutoModelForCausalLM", "-o", srt]) == 0
    capsys.readouterr()
    assert main(["inspect", srt, "--trust-arch", *tokens]) == 0
    assert "multiply-adds per sample on [16]" in capsys.readouterr().out
    assert main(["bench", srt, "--trust-arch", *tokens, "--baselines", "dense", "--time", "0.2", "--warmup", "0",
                 "--no-progress", "--json", str(tmp_path / "bench.json")]) == 0
    import json

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["config"]["tokens"] == 100
    assert report["variants"][0]["engines"]["dense"]["max_rel_diff"] < 1e-5  # outputs checked on the logits
    for flavor in ("sparse", "portable"):  # GPT-2's key/value cache is off while exporting
        assert main(["export", srt, "--trust-arch", *tokens, "--flavor", flavor, "-o",
                     str(tmp_path / f"{flavor}.onnx")]) == 0, capsys.readouterr().err


def test_inspect_without_an_architecture_leaves_embedding_tables_out(tmp_path, capsys):
    """Before: BERT's embedding tables counted as Linear multiply-adds (3.38x theoretical speedup for
    90% BERT, where its Linear layers give ~10x)."""
    from sparse_rt.cli import main

    torch.manual_seed(0)
    bert = _prune_globally(transformers.BertModel(transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100)))
    from torch.nn.utils import prune

    for layer in bert.modules():
        if hasattr(layer, "weight_orig"):
            prune.remove(layer, "weight")
    torch.save(bert.state_dict(), tmp_path / "bert.pt")
    assert main(["inspect", str(tmp_path / "bert.pt")]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.0.attention.self.query" in out and "embeddings" not in out.split("parameters")[0]

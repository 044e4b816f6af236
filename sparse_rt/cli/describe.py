"""What convert and inspect print about a model: its source, its per-layer table and the
ShrinkBench totals."""

from ..arch import spec_input_shape
from ..metrics import model_metrics


def arch_text(spec):
    if spec is None:
        return "an nn.Module instance"
    return f"{spec['name']}({', '.join(f'{k}={v!r}' for k, v in spec['kwargs'].items())})"


def print_source(source):
    if source:
        print(f"source: {source.get('file')} [{source.get('form')}] sha256 {source.get('sha256')}")
        for note in source.get("notes", []):
            print(f"  - {note}")


def totals(metrics, missing_macs_hint):
    line = (f"parameters {metrics.params:,}  nonzeros {metrics.nonzeros:,}  "
            f"compression ratio {metrics.compression_ratio:.2f}x  ")
    if metrics.theoretical_speedup is None:
        return line + f"theoretical speedup n/a ({missing_macs_hint})"
    shape = f" on {list(metrics.input_shape)}" if metrics.input_shape else ""
    return line + (f"theoretical speedup {metrics.theoretical_speedup:.2f}x (multiply-adds per sample{shape}: "
                   f"dense {metrics.dense_macs:,}, nonzero {metrics.nonzero_macs:,})")


def print_model(model, input_shape=None, tokens=None):
    """The summary table, then the totals (multiply-adds on `input_shape`, token ids below `tokens`
    if given, or the zoo model's own shape)."""
    print(model.summary())
    shape = input_shape or spec_input_shape(model.arch_spec)
    print(totals(model_metrics(model, shape, tokens=tokens), "pass --input-shape"))

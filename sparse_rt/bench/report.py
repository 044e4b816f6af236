"""BenchReport: what `sparse_rt.bench.run` returns and `sparse-rt bench` prints (rich tables),
writes (--json, --csv) and draws (--plot)."""

import csv
import io
import json
import math
from pathlib import Path

LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "items_per_s",
                  "iterations")
CSV_FIELDS = ("sparsity", "batch", "engine", *LATENCY_FIELDS, "speedup")
TOP_LAYERS = 10


def _json_safe(value):
    """inf / nan (a layer with no nonzeros) become null: strict JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class BenchReport:
    """One benchmark run. `data` is the JSON document: date, machine, versions, model, config,
    `load` (1/5/15-minute load averages at the start and end of the run, the threads, and the
    busy-machine warning or null) and one entry per model variant (sparsity) with ShrinkBench
    `metrics`, `engines` (status, notes, output check), `results` (per batch and engine: latency
    fields and sparse_rt's speedup over that engine, p50 / p50 from the same run) and `layers`
    (per leaf layer: planner format and reason, metrics, time and share of the forward per batch
    size)."""

    def __init__(self, data):
        self.data = data

    def rows(self):
        """Flat result rows (one per sparsity x batch x engine), each with its sparsity."""
        return [{"sparsity": v["sparsity"], **r} for v in self.data["variants"] for r in v["results"]]

    def speedup(self, baseline, batch, sparsity=None):
        """sparse_rt's speedup over `baseline` at `batch` (and `sparsity`, when several were run)."""
        for row in self.rows():
            if (row["engine"], row["batch"]) == (baseline, batch) and sparsity in (None, row["sparsity"]):
                return row["speedup"]
        raise KeyError(f"no result for engine {baseline!r} at batch {batch}"
                       f"{'' if sparsity is None else f', sparsity {sparsity}'}")

    def to_dict(self):
        return _json_safe(self.data)

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def to_csv(self, path=None):
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        if path is not None:
            Path(path).write_text(out.getvalue())
        return out.getvalue()

    def plot(self, path):
        from .plot import plot_report

        plot_report(self, path)

    def __rich_console__(self, console, options):
        yield from _renderables(self.data)

    def __str__(self):
        from rich.console import Console

        console = Console(file=io.StringIO(), width=140, color_system=None)
        console.print(self)
        return console.file.getvalue()


def _fmt(value, spec=".3f"):
    return "—" if value is None else format(value, spec)


def _count(n):
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _renderables(data):
    from rich.table import Table
    from rich.text import Text

    cfg, machine, versions = data["config"], data["machine"], data["versions"]
    where = machine["gpu"] if cfg["device"].startswith("cuda") else f"{machine['cpu']} ({machine['cores']} cores)"
    show_sparsity = len(data["variants"]) > 1
    single = data["variants"][0]["sparsity"]
    name = data["model"]["name"] + ("" if show_sparsity or single is None else f" at sparsity {single:g}")
    yield Text(f"sparse_rt bench: {name}, input {tuple(data['model']['input_shape'])}, "
               f"{cfg['device']} {cfg['dtype']}, {cfg['threads']} threads, on {where}; torch "
               f"{versions['torch']}, sparse_rt {versions['sparse_rt']}, {data['date']}", style="bold")
    warning = data.get("load", {}).get("warning")  # reports written before it have no "load"
    if warning:
        yield Text(f"WARNING: {warning}", style="bold red")

    table = Table(title="latency per batch (ms), interleaved in one run", title_justify="left")
    for column in (["sparsity"] if show_sparsity else []) + ["batch", "engine", "p50", "p90", "p99", "mean",
                                                        "std", "items/s", "iters", "sparse_rt speedup"]:
        table.add_column(column, justify="left" if column in ("engine",) else "right")
    for variant in data["variants"]:
        for r in variant["results"]:
            speedup = "—" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            cells = [_fmt(r[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")]
            table.add_row(*([_fmt(variant["sparsity"], "g")] if show_sparsity else []),
                          str(r["batch"]), r["engine"], *cells, f"{r['items_per_s']:.1f}",
                          str(r["iterations"]), speedup, style="bold" if r["engine"] == "sparse_rt" else None)
    yield table

    notes, wrong = [], []  # wrong: baselines dropped for computing another model (runner.WRONG_OUTPUT_REL)
    for variant in data["variants"]:
        label = f"sparsity {variant['sparsity']:g}: " if variant["sparsity"] is not None else ""
        for name, status in variant["engines"].items():
            check = status.get("max_rel_diff")
            text = "; ".join(t for t in (status["note"], status.get("cuda_graph") and
                                         f"CUDA graph {status['cuda_graph']}") if t)
            if status["status"] != "ok" or text or (check is not None and check > 1e-3):
                (wrong if status["status"] == "wrong output" else notes).append(
                    f"{label}{name}: {status['status']}"
                    f"{f', max rel diff vs sparse_rt {check:.1e}' if check is not None else ''}"
                    f"{f' ({text})' if text else ''}")
    if wrong:
        yield Text("\n".join(wrong), style="bold red")
    if notes:
        yield Text("\n".join(notes), style="yellow")

    metrics = Table(title="ShrinkBench metrics (Linear/Conv2d multiply-adds per sample)", title_justify="left")
    for column in ("sparsity", "params", "nonzeros", "compression", "dense MACs", "nonzero MACs",
                   "theoretical speedup", "sparse layers"):
        metrics.add_column(column, justify="right")
    for variant in data["variants"]:
        m = variant["metrics"]
        planned = [layer for layer in variant["layers"] if layer["format"] is not None]
        metrics.add_row(_fmt(variant["sparsity"], "g"), _count(m["params"]), _count(m["nonzeros"]),
                        f"{_fmt(m['compression_ratio'], '.2f')}x", _count(m["dense_macs"]),
                        _count(m["nonzero_macs"]), f"{_fmt(m['theoretical_speedup'], '.2f')}x",
                        f"{sum(layer['format'] != 'dense' for layer in planned)}/{len(planned)}")
    yield metrics

    for variant in data["variants"]:
        yield _layer_table(variant, cfg["batches"])


def _layer_table(variant, batches):
    from rich.table import Table

    last = len(batches) - 1  # the largest share of time is the most telling at the last batch size
    layers = sorted(variant["layers"], key=lambda layer: layer["time_share"][last], reverse=True)
    shown = layers[:TOP_LAYERS]
    accounted = sum(layer["time_share"][last] for layer in variant["layers"])
    sparsity = "" if variant["sparsity"] is None else f", sparsity {variant['sparsity']:g}"
    title = (f"top {len(shown)} of {len(layers)} layers by time at batch {batches[last]}{sparsity} "
             f"(forward {variant['forward_ms'][last]:.2f} ms; layers {accounted:.0%} of it, the rest "
             "is Python and functional ops)")
    table = Table(title=title, title_justify="left")
    for column in ("layer", "kind", "format", "density", "nonzeros", "theor. speedup", "ms", "share", "why"):
        table.add_column(column, justify="left" if column in ("layer", "kind", "format", "why") else "right")
    for layer in shown:
        table.add_row(layer["name"], layer["kind"], layer["format"] or "—", _fmt(layer["density"]),
                      _count(layer.get("nonzeros")),
                      f"{layer['theoretical_speedup']:.2f}x" if layer.get("theoretical_speedup") else "—",
                      f"{layer['time_ms'][last]:.3f}", f"{layer['time_share'][last]:.1%}",
                      layer["reason"] or "")
    return table

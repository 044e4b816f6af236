"""The --plot figure: latency vs batch per engine; with several sparsities also the measured
speedup vs sparsity per baseline and batch, next to the theoretical (ShrinkBench) speedup."""

# A Figure of its own, not pyplot: it needs no backend and leaves the caller's pyplot state alone.
from matplotlib.figure import Figure

COLORS = {"sparse_rt": "tab:red", "dense": "tab:blue", "torch-sparse": "tab:green", "onnxruntime": "tab:purple",
          "onnxruntime-sparse": "tab:pink", "openvino": "tab:cyan"}
LINESTYLES = ("-", "--", ":", "-.")


def plot_report(report, path):
    data = report.data
    variants = data["variants"]
    several = len(variants) > 1
    fig = Figure(figsize=(13 if several else 7, 5))
    axes = fig.subplots(1, 2 if several else 1, squeeze=False)
    shown = max(variants, key=lambda v: v["sparsity"] or 0.0)
    _latency_panel(axes[0][0], shown, data["config"]["batches"])
    if several:
        _speedup_panel(axes[0][1], variants, data["config"]["batches"])
    cfg = data["config"]
    fig.suptitle(f"sparse_rt bench: {data['model']['name']} on {cfg['device']} "
                 f"({data['machine']['cpu'] if cfg['device'] == 'cpu' else data['machine']['gpu']}, "
                 f"{cfg['threads']} threads, {cfg['dtype']}), {data['date'][:10]}"
                 f"{' - MACHINE BUSY (see report)' if data.get('load', {}).get('warning') else ''}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _latency_panel(ax, variant, batches):
    by_engine = {}
    for r in variant["results"]:
        by_engine.setdefault(r["engine"], []).append(r)
    for engine, rows in by_engine.items():
        rows.sort(key=lambda r: r["batch"])
        xs = [r["batch"] for r in rows]
        color = COLORS.get(engine)
        ax.plot(xs, [r["p50_ms"] for r in rows], "o-", color=color, label=engine,
                linewidth=2.5 if engine == "sparse_rt" else 1.5)
        ax.fill_between(xs, [r["p50_ms"] for r in rows], [r["p90_ms"] for r in rows], color=color, alpha=0.15)
    if len(batches) > 1:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch, ms (p50; band to p90)")
    sparsity = "" if variant["sparsity"] is None else f" at sparsity {variant['sparsity']:g}"
    ax.set_title(f"latency vs batch{sparsity}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def _speedup_panel(ax, variants, batches):
    variants = sorted(variants, key=lambda v: v["sparsity"])
    sparsities = [v["sparsity"] for v in variants]
    baselines = [e for e in variants[0]["engines"] if e != "sparse_rt"]
    for baseline in baselines:
        for style, batch in zip(LINESTYLES * len(batches), batches):
            ys = [next((r["speedup"] for r in v["results"] if (r["engine"], r["batch"]) == (baseline, batch)), None)
                  for v in variants]
            if all(y is None for y in ys):
                continue
            ax.plot(sparsities, [float("nan") if y is None else y for y in ys], marker="o", linestyle=style,
                    color=COLORS.get(baseline), label=f"vs {baseline}, batch {batch}")
    theoretical = [v["metrics"]["theoretical_speedup"] for v in variants]
    if all(t is not None for t in theoretical):
        ax.plot(sparsities, theoretical, "k--", linewidth=1, label="theoretical (dense / nonzero MACs)")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("sparse_rt speedup (baseline p50 / sparse_rt p50)")
    ax.set_title("speedup vs sparsity (same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

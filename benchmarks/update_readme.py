"""Rewrites the README's performance tables from the newest result files in benchmarks/results/,
so the numbers there always come from a real run:

    python benchmarks/update_readme.py [TABLE ...]     (default: every table with results)

cpu    <- cpu-{linear,conv,plan,e2e}-DATE.json, the newest of each on one machine (`make bench`)
bench  <- bench-MODEL-DATE.json, the newest per model (`make bench-report`)
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks/results"


def _measured(r, paths):
    files = ", ".join(f"`{p.relative_to(ROOT)}`" for p in paths)
    return (f"Measured {r['date']} on {r['machine']['cpu']} ({r['machine']['threads']} threads), "
            f"torch {r['versions']['torch']}; from {files}.")


CPU_SUITES = {  # result file prefix: what its cases are
    "cpu-linear": "Linear, DLMC transformer 0.9 layers; BERT-base shapes by density",
    "cpu-conv": "Conv2d, DLMC ResNet-50 layers, real shapes, batch 1",
    "cpu-plan": "Conv2d as sparsify() plans it, same layers",
    "cpu-e2e": "End to end, batch 1",
}


def host(report):
    """What tells the machines of two results files apart: the CPU (family and model numbers since
    2026-12-07; before, a virtual machine's generic name only) and the x86-64 level sparse_rt's kernels ran
    at (files from before it was recorded come from the AVX-512 reference machine)."""
    return report["machine"]["cpu"], report["versions"]["sparse_rt_build"].get("cpu_isa", "x86-64-v4")


def newest_on_one_host(prefixes):
    """{prefix: (path, report)}, the newest run of each suite on one machine: the machine of the newest run of
    any of them, so that one table or plot never mixes machines; a suite never run there is left out."""
    runs = [(path, json.loads(path.read_text())) for prefix in prefixes for path in RESULTS.glob(f"{prefix}-*.json")]
    if not runs:
        return {}
    machine = host(max(runs, key=lambda run: run[1]["date"])[1])
    newest = {}
    for path, report in sorted(runs, key=lambda run: run[1]["date"]):
        prefix = next(p for p in prefixes if path.name.startswith(f"{p}-"))
        if host(report) == machine:
            newest[prefix] = (path, report)
    return newest


def cpu_table():
    newest = newest_on_one_host(list(CPU_SUITES))
    if not newest:
        return None
    reports = {p: report for p, (_, report) in newest.items()}
    paths = [path for path, _ in newest.values()]
    lines = [_measured(next(iter(reports.values())), paths), "",
             "| suite | series | sparse_rt vs | geomean | min–max | cases |", "| --- " * 6 + "|"]
    for prefix, r in reports.items():
        for series, by_engine in r["summary"].items():
            for engine, s in sorted(by_engine.items()):
                lines.append(f"| {CPU_SUITES[prefix]} | {series} | {engine} | **{s['geomean']:.2f}x** | "
                             f"{s['min']:.2f}–{s['max']:.2f} | {s['cases']} |")
    return "\n".join(lines)


def bench_table():
    newest = {}
    for path in sorted(RESULTS.glob("bench-*.json")):  # dates sort, so the last per model wins
        match = re.fullmatch(r"bench-(.+)-\d{4}-\d{2}-\d{2}", path.stem)
        if match:
            newest[match[1]] = path
    if not newest:
        return None
    reports = {model: json.loads(path.read_text()) for model, path in sorted(newest.items())}
    first = next(iter(reports.values()))
    baselines = first["config"]["baselines"]
    busy = [f"{model}: {r['load']['warning']}" for model, r in reports.items() if r.get("load", {}).get("warning")]
    lines = [_measured(first, list(newest.values())), *(["", "**Measured on a busy machine** (indicative only; rerun "
                                                         "quiet): " + "; ".join(busy)] if busy else []), "",
             "| model | sparsity | batch | sparse_rt p50 ms | " + " | ".join(f"vs {b}" for b in baselines)
             + " | theoretical |", "| --- " * (5 + len(baselines)) + "|"]
    for model, r in reports.items():
        for variant in r["variants"]:
            theoretical = variant["metrics"]["theoretical_speedup"]
            for batch in r["config"]["batches"]:
                rows = {x["engine"]: x for x in variant["results"] if x["batch"] == batch}
                cells = [f"{rows[b]['speedup']:.2f}x" if b in rows else "n/a" for b in baselines]
                lines.append(f"| {model} | {variant['sparsity']:g} | {batch} | {rows['sparse_rt']['p50_ms']:.2f} | "
                             + " | ".join(cells) + f" | {theoretical:.2f}x |")
    return "\n".join(lines)


TABLES = {"cpu": cpu_table, "bench": bench_table}


def replace_between_markers(text, name, body):
    begin, end = f"<!-- {name}-table:begin -->", f"<!-- {name}-table:end -->"
    head, found, rest = text.partition(begin)
    _, found_end, tail = rest.partition(end)
    if not found or not found_end:
        raise ValueError(f"README.md has no {begin} ... {end} markers")
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main(names):
    unknown = set(names) - set(TABLES)
    if unknown:
        sys.exit(f"unknown table(s) {', '.join(sorted(unknown))}; known: {', '.join(TABLES)}")
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in names or TABLES:
        body = TABLES[name]()
        if body is None:
            if names:
                sys.exit(f"no benchmarks/results/ files for the {name} table: run its make target first")
            print(f"{name} table: no results yet, left as is")
            continue
        try:
            text = replace_between_markers(text, name, body)
        except ValueError as e:
            sys.exit(str(e))
        print(f"README.md {name} table updated")
    readme.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])

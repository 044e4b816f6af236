"""Rewrites the README's performance table from the newest benchmarks/results/cpu-linear-*.json,
so the numbers there always come from a real run:  python benchmarks/update_readme.py"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- cpu-linear-table:begin -->", "<!-- cpu-linear-table:end -->"


def table(result_path):
    r = json.loads(result_path.read_text())
    lines = [f"Measured {r['date']} on {r['machine']['cpu']} ({r['machine']['threads']} threads), "
             f"torch {r['versions']['torch']}; from `{result_path.relative_to(ROOT)}`.", "",
             "| batch | vs dense torch, geomean (min–max) | vs torch.sparse CSR, geomean (min–max) | layers |",
             "| --- | --- | --- | --- |"]
    for series, by_engine in sorted(r["summary"].items(), key=lambda kv: int(kv[0].split("=")[1])):
        cells = [f"{s['geomean']:.2f}x ({s['min']:.2f}–{s['max']:.2f})"
                 for s in (by_engine["dense"], by_engine["torch_csr"])]
        lines.append(f"| {series.split('=')[1]} | {cells[0]} | {cells[1]} | {by_engine['dense']['cases']} |")
    return "\n".join(lines)


def main():
    results = sorted((ROOT / "benchmarks/results").glob("cpu-linear-*.json"))
    if not results:
        sys.exit("no benchmarks/results/cpu-linear-*.json: run `make bench` first")
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
        sys.exit(f"README.md has no {BEGIN} marker")
    readme.write_text(f"{head}{BEGIN}\n{table(results[-1])}\n{END}{tail}")
    print(f"README.md table updated from {results[-1].name}")


if __name__ == "__main__":
    main()

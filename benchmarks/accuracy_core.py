"""Data-free vs calibrated Atom W4A4 on a real model (CPU is enough): perplexity on held-out wiki.

    python benchmarks/accuracy_core.py --model smollm2-135m --windows 4 --seq-len 1024

The float model is the GGUF-dequantized checkpoint (the reference of every row). Calibration:
--calib-samples random windows of --calib-seq-len tokens from the calibration part of wiki
(atom_ao.data.wiki_split); evaluation on the held-out part, non-overlapping windows.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import atom_ao  # noqa: E402
from atom_ao import atom_config, data  # noqa: E402
from atom_ao.eval.perplexity import perplexity  # noqa: E402
from common import markdown_table, write_results  # noqa: E402
from torchao.quantization import quantize_  # noqa: E402


def decoder_linears(module, fqn):
    return isinstance(module, torch.nn.Linear) and "lm_head" not in fqn


VARIANTS = {
    # key: (description, config kwargs, calibrated?)
    "calibrated": ("Atom W4A4, calibrated", dict(), True),
    "data-free": ("Atom W4A4, data-free (outliers from weights)", dict(), False),
    "no-outliers": ("W4A4 without outliers (n_outliers=0)", dict(n_outliers=0), False),
    "act-clip-1": ("Atom W4A4, calibrated, activation clip 1.0", dict(act_clip_ratio=1.0), True),
    "wclip-1": ("Atom W4A4, calibrated, weight clip fixed at 1.0 (no search)", dict(weight_clip_ratio=1.0), True),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    base, tok = data.load_model(args.model)
    ids = data.eval_tokens(tok, "wiki")
    batches = data.calibration_batches(tok, args.calib_samples, args.calib_seq_len)
    kw = dict(seq_len=args.seq_len, max_windows=args.windows)
    rows = [{"method": "float (GGUF-dequantized reference)", "ppl_wiki": round(perplexity(base, ids, **kw), 3), "quant_s": 0.0}]
    print(rows[-1], flush=True)
    for name in args.variants.split(","):
        label, cfg, calibrated = VARIANTS[name]
        model = copy.deepcopy(base)
        t = time.perf_counter()
        if calibrated:
            atom_ao.quantize_calibrated(model, batches, atom_config(**cfg), filter_fn=decoder_linears, progress=False)
        else:
            quantize_(model, atom_config(**cfg), filter_fn=decoder_linears)
        q_s = time.perf_counter() - t
        rows.append({"method": label, "ppl_wiki": round(perplexity(model, ids, **kw), 3), "quant_s": round(q_s, 1)})
        print(rows[-1], flush=True)
    for r in rows:
        r["delta_vs_float"] = round(r["ppl_wiki"] - rows[0]["ppl_wiki"], 3)
    cols = ["method", "ppl_wiki", "delta_vs_float", "quant_s"]
    print(markdown_table(rows, cols))
    write_results(f"accuracy_core_{args.model}", rows, cols,
                  {"command": " ".join(sys.argv), "eval": f"held-out wiki, {args.windows} x {args.seq_len} tokens",
                   "calibration": f"{args.calib_samples} x {args.calib_seq_len} tokens of the calibration part"})


if __name__ == "__main__":
    main()

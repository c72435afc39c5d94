"""Where Atom W4A4's perplexity loss comes from, on a real model (CPU): an ablation.

    python benchmarks/accuracy_ablation.py --model smollm2-135m --windows 3 --seq-len 2048

Every row is evaluated with simulated Atom linears (``atom_ao.eval.simulate``: dequantized weights,
fake-quantized activations; the same function as the W4A4 path up to float rounding, ~3x faster on
CPU), so that weights and activations can be quantized separately. Perplexity on the held-out wiki
part, non-overlapping windows; calibration: --calib-samples random windows of --calib-seq-len tokens
of the wiki calibration part. ``lm_head`` stays float everywhere.
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
from atom_ao.eval.methods import decoder_linears, kv4_forward  # noqa: E402
from atom_ao.eval.perplexity import perplexity  # noqa: E402
from atom_ao.eval.simulate import simulate_  # noqa: E402
from common import markdown_table, write_results  # noqa: E402

LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--skip", default="", help="comma list of row groups to skip: main,variants,types")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--outlier-counts", default="", help="comma list of INT8 outlier counts: A4-only rows (weights "
                                                          "float), all linears and down_proj alone, one RTN model each")
    ap.add_argument("--act-clips", default="", help="comma list of activation clip ratios: A4-only rows (weights "
                                                     "float), the RTN model's clip set after quantization")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    base, tok = data.load_model(args.model)
    ids = data.eval_tokens(tok, "wiki")
    batches = data.calibration_batches(tok, args.calib_samples, args.calib_seq_len)
    rows = []

    def ev(label, model, kv4=False, quant_s=None, group=""):
        t = time.perf_counter()
        ppl = perplexity(model, ids, seq_len=args.seq_len, max_windows=args.windows, progress=False,
                         forward=kv4_forward() if kv4 else None)
        rows.append({"group": group, "row": label, "ppl_wiki": round(ppl, 3),
                     "quant_s": "" if quant_s is None else round(quant_s, 1), "eval_s": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)

    def build(**cfg):
        seq = cfg.pop("sequential", None)
        m = copy.deepcopy(base)
        t = time.perf_counter()
        # fold=False: the rows below swap single layers back to float (only=..., weights=False),
        # which needs every layer's rows and columns in the float model's order
        atom_ao.quantize_calibrated(m, batches, atom_config(**cfg), filter_fn=decoder_linears, progress=False,
                                    sequential=seq, fold=False)
        return m, time.perf_counter() - t

    def sim(m, **kw):
        return simulate_(copy.deepcopy(m), float_model=base, **kw)

    ev("float", base, group="reference")
    rtn, rtn_s = build()

    def set_act_clip(model, c):  # read at run time (AtomQuantTensor.act_clip_ratio): no re-quantization
        for mod in model.modules():
            if isinstance(getattr(mod, "weight", None), atom_ao.AtomQuantTensor):
                mod.weight.act_clip_ratio = c

    for c in (float(x) for x in args.act_clips.split(",") if x):
        set_act_clip(rtn, c)
        ev(f"activations only A4, activation clip {c}", sim(rtn, weights=False), group="activation clip")
    set_act_clip(rtn, atom_config().act_clip_ratio)
    for n in (int(x) for x in args.outlier_counts.split(",") if x):
        m = rtn if n == atom_config().n_outliers else build(n_outliers=n)[0]
        ev(f"activations only A4, {n} INT8 outliers (weights float)", sim(m, weights=False), group="outlier count")
        ev(f"only down_proj's activations A4, {n} INT8 outliers (the rest float)",
           sim(m, weights=False, only="down_proj"), group="outlier count")
    if "main" in skip:
        _write(rows, args)
        return
    ev("float + INT4 KV", base, kv4=True, group="KV")
    gptq, gptq_s = build(weight_method="gptq")
    ev("Atom W4A4 GPTQ (sequential)", sim(gptq), quant_s=gptq_s, group="main")
    ev("Atom W4A4 GPTQ + INT4 KV", sim(gptq), kv4=True, group="main")
    ev("Atom W4A4 RTN", sim(rtn), quant_s=rtn_s, group="main")
    ev("weights only W4 GPTQ (activations float)", sim(gptq, activations=False), group="weights vs activations")
    ev("weights only W4 RTN (activations float)", sim(rtn, activations=False), group="weights vs activations")
    ev("activations only A4 with 128 INT8 outliers (weights float)", sim(rtn, weights=False),
       group="weights vs activations")
    if "variants" not in skip:
        m, s = build(n_outliers=0)
        ev("W4A4 RTN, no outliers (calibrated clip search)", sim(m), quant_s=s, group="outliers")
        ev("activations only A4, no outliers (weights float)", sim(m, weights=False), group="outliers")
        m, s = build(n_outliers=256)
        ev("W4A4 RTN, 256 outliers", sim(m), quant_s=s, group="outliers")
        m, s = build(group_size=64)
        ev("W4A4 RTN, group 64", sim(m), quant_s=s, group="groups")
        m, s = build(act_clip_ratio=1.0)
        ev("W4A4 RTN, activation clip 1.0 (instead of 0.9)", sim(m), quant_s=s, group="clipping")
        m, s = build(weight_clip_ratio=1.0)
        ev("W4A4 RTN, weight clip 1.0 (no search)", sim(m), quant_s=s, group="clipping")
        m, s = build(weight_method="gptq", sequential=False)
        ev("W4A4 GPTQ, all layers at once (not sequential)", sim(m), quant_s=s, group="GPTQ")
        m, s = build(weight_method="gptq", gptq_damp=0.01)
        ev("W4A4 GPTQ, damping 0.01", sim(m), quant_s=s, group="GPTQ")
    if "types" not in skip:
        for t in LAYER_TYPES:
            ev(f"only {t} in W4A4 GPTQ (the rest float)", sim(gptq, only=t), group="per layer type")
    _write(rows, args)


def _write(rows, args):
    cols = ["group", "row", "ppl_wiki", "quant_s", "eval_s"]
    print(markdown_table(rows, cols))
    write_results(f"accuracy_ablation_{args.model}{args.tag}", rows, cols,
                  {"command": "python benchmarks/accuracy_ablation.py " + " ".join(sys.argv[1:]),
                   "eval": f"held-out wiki, {args.windows} x {args.seq_len} tokens, simulated Atom linears",
                   "calibration": f"{args.calib_samples} x {args.calib_seq_len} tokens of the calibration part"})


if __name__ == "__main__":
    main()

"""How much of W4A4's activation cost is the activation format? A CPU exploration (Qwen2.5-0.5B).

    python benchmarks/explore_act_format.py [--model qwen2.5-0.5b] [--windows 2] [--gptq]

Atom quantizes activations symmetrically: INT4 per (token, group of 128), scale = clip * absmax / 7.
This swaps, in the simulated linears (``atom_ao.eval.simulate``: the real path's function up to
float rounding), the activation quantizer for:
  * asymmetric INT4: per (token, group) min / max, 16 levels, a float offset (no clip);
  * symmetric INT4 with groups of 64;
keeping the calibrated permutation and the 128 INT8 outlier channels. Rows: activations only
(weights float), and with --gptq also the whole W4A4 GPTQ model. Held-out wiki perplexity, first
--windows windows of 2048 tokens. Not part of the library: a measurement of where to go next (an
asymmetric format needs a per-(token, group) offset times the weight rows' code sums in the GEMM).
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
import atom_ao.eval.simulate as simulate  # noqa: E402
from atom_ao import atom_config, data  # noqa: E402
from atom_ao.eval.methods import decoder_linears  # noqa: E402
from atom_ao.eval.perplexity import perplexity  # noqa: E402
from atom_ao.format import permute_and_pad, quantize_int8_rows  # noqa: E402
from common import markdown_table, write_results  # noqa: E402

ATOM = simulate.fake_quantize_activation


def _unpermute(deq_normal, outliers, perm, kn):
    qo, so = quantize_int8_rows(outliers)
    permuted = torch.cat([deq_normal[:, :kn], qo.float() * so[:, None]], dim=1)
    out = torch.empty_like(permuted)
    out[:, perm.long()] = permuted
    return out


def asymmetric(x, perm, n_outliers, group_size, clip_ratio):
    """INT4 with a float offset per (token, group): 16 levels from min to max (no clip)."""
    normal, outliers = permute_and_pad(x, perm, n_outliers, group_size)
    g = normal.float().reshape(normal.shape[0], -1, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    s = ((hi - lo) / 15).clamp_min(1e-8)
    q = ((g - lo) / s).round().clamp(0, 15)
    return _unpermute((q * s + lo).reshape(normal.shape[0], -1), outliers, perm, x.shape[1] - n_outliers)


def groups_of_64(x, perm, n_outliers, group_size, clip_ratio):
    return ATOM(x, perm, n_outliers, 64, clip_ratio)


FORMATS = {"symmetric INT4, groups of 128, clip 0.9 (Atom)": ATOM,
           "asymmetric INT4, groups of 128, no clip": asymmetric,
           "symmetric INT4, groups of 64, clip 0.9": groups_of_64}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--gptq", action="store_true", help="also the whole W4A4 GPTQ model (~10 min more)")
    args = ap.parse_args()
    torch.manual_seed(0)
    base, tok = data.load_model(args.model)
    ids = data.eval_tokens(tok, "wiki")
    batches = data.calibration_batches(tok, 64, 512)
    rows = []

    def quantized(**cfg):
        m = copy.deepcopy(base)
        atom_ao.quantize_calibrated(m, batches, atom_config(**cfg), filter_fn=decoder_linears, progress=False,
                                    fold=False)
        return m

    def ev(label, model, fmt, **sim):
        simulate.fake_quantize_activation = FORMATS[fmt]
        try:
            t = time.perf_counter()
            ppl = perplexity(simulate.simulate_(copy.deepcopy(model), float_model=base, **sim), ids, seq_len=2048,
                             max_windows=args.windows, progress=False)
        finally:
            simulate.fake_quantize_activation = ATOM
        rows.append({"row": label, "activations": fmt, "ppl_wiki": round(ppl, 3), "eval_s": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)

    rows.append({"row": "float", "activations": "-", "ppl_wiki": round(perplexity(base, ids, seq_len=2048,
                 max_windows=args.windows, progress=False), 3), "eval_s": ""})
    print(rows[-1], flush=True)
    rtn = quantized()
    for fmt in FORMATS:
        ev("activations only (weights float)", rtn, fmt, weights=False)
    if args.gptq:
        gptq = quantized(weight_method="gptq")
        for fmt in list(FORMATS)[:2]:
            ev("W4A4 GPTQ", gptq, fmt)
    write_results(f"explore_act_format_{args.model}", rows, ["row", "activations", "ppl_wiki", "eval_s"],
                  {"model": args.model, "windows": args.windows})
    print(markdown_table(rows, ["row", "activations", "ppl_wiki", "eval_s"]))


if __name__ == "__main__":
    main()

"""The decode-attention kernels' error against the float32 reference at real sizes (GPU), each
kernel form the flags pick, so a precision change shows as numbers rather than a pass / fail.

    python scripts/decode_error.py [--flags atom_ao.ops.kv_decode_attention:PLANES_HI16]

Prints rel = |got - want| / |want| per case against the float32 reference (the GPU tests' measure,
tolerance 2e-2 for bf16; the tests compare with the reference rounded to bf16) and the error of the
reference itself rounded to bf16 (the floor any bf16 output has). Session 31's log
(``results/h200/session31_decode_error.log``) predates this: its reference was the bf16 one, so its
floor column reads 0.
"""

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from atom_ao.kv.reference import decode_attention_ref  # noqa: E402
from tests.ops.test_kv_attention import real_size_case, rel_error  # noqa: E402

CASES = [(1, 8192, 32, 8), (3, 33000, 32, 8), (1, 32768, 32, 32), (4, 4096, 32, 32), (64, 2048, 32, 8)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flags", default="atom_ao.ops.kv_decode_attention:PLANES_HI16",
                    help="module:NAME booleans, each measured on and off")
    args = ap.parse_args()
    flags = [f.split(":") for f in args.flags.split(",") if f]
    print(f"device: {torch.cuda.get_device_name()}")
    print("| batch | ctx | heads | kv heads | bf16 floor | " + " | ".join(f"{n} on | {n} off" for _, n in flags) + " |")
    for batch, ctx, heads, kv_heads in CASES:
        d = 128
        caches, table, q, seq_lens = real_size_case(batch, ctx, heads, kv_heads, d)  # the GPU test's case
        # the reference on the same query values in float32 (its output stays float32)
        want = decode_attention_ref(q.float(), *[c.cpu() for c in caches], table.cpu(), seq_lens, None, d ** -0.5)
        row = [f"{rel_error(want.to(torch.bfloat16), want):.2e}"]
        for mod, name in flags:
            m = importlib.import_module(mod)
            keep = getattr(m, name)
            for on in (True, False):
                setattr(m, name, on)
                got = torch.ops.atom_ao.kv_decode_attention(q.cuda(), *caches, table, seq_lens.cuda(), None,
                                                            d ** -0.5, ctx)
                row.append(f"{rel_error(got, want):.2e}")
            setattr(m, name, keep)
        print(f"| {batch} | {ctx} | {heads} | {kv_heads} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

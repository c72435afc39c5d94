"""Why does the compiled unwrapped block differ from the eager one on the GPU (session 20)?

    python scripts/unwrap_compile_diag.py
Runs tests/test_unwrap.py's block eager and compiled, subclass weights and unwrapped, with and
without atom_ao's Inductor pass, in bf16 and float32, and prints each output's SQNR (dB) and
largest difference against the eager subclass output, plus how many activation codes the
compiled elementwise part changes (Inductor computes ``q + k * v`` in float32 and rounds once;
eager rounds ``k * v`` first, so a few codes of the next quantizer can differ).
"""
import copy
import sys

import torch

sys.path.insert(0, "tests")
import atom_ao  # noqa: E402
import atom_ao.inductor as passes  # noqa: E402
from conftest import sqnr  # noqa: E402
from test_unwrap import _quantized_block  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the reference ops, as a check of the script


def compiled(model, x):
    torch._dynamo.reset()
    with torch.no_grad():
        return torch.compile(model, fullgraph=True)(x)


def main():
    for dtype in (torch.bfloat16, torch.float32):
        model, x = _quantized_block()
        model, x = model.to(DEVICE).to(dtype), x.to(DEVICE).to(dtype)
        sub = copy.deepcopy(model)
        unw = atom_ao.unwrap_weights(model)
        with torch.no_grad():
            ref = sub(x)
            rows = {"eager unwrapped": unw(x), "compiled subclass": compiled(sub, x),
                    "compiled unwrapped": compiled(unw, x)}
            passes.uninstall()
            rows["compiled subclass, no pass"] = compiled(sub, x)
            rows["compiled unwrapped, no pass"] = compiled(unw, x)
            passes.install()
            # the block's first half, eager, with q + k * v summed in float32 as Inductor does
            a32 = (sub.q(x).float() + sub.k(x).float() * sub.v(x).float()).to(dtype)
            a_eager = sub.q(x) + sub.k(x) * sub.v(x)
            rows["eager, q + k*v in float32"] = sub.down(torch.relu(sub.up(a32)))
        print(f"{dtype}: |ref| max {ref.abs().max().item():.3g}, a: {(a32 != a_eager).sum().item()} of "
              f"{a32.numel()} elements differ by float32 summation")
        for name, y in rows.items():
            print(f"  {name:32s} SQNR {sqnr(ref, y):7.2f} dB  max |diff| {(y - ref).abs().max().item():.4g}  "
                  f"vs compiled subclass {sqnr(rows['compiled subclass'], y):7.2f} dB")


if __name__ == "__main__":
    main()

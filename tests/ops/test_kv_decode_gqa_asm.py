"""The planes kernel's inline PTX (``kv_decode_gqa._word_pairs_asm`` / ``_word_pairs_hi16_asm``) run
by a small emulator of the three instructions it uses, against the planes the interpreter path
builds (``_plane`` / ``_plane_hi16``): the GPU-only asm is checked on CPU, bit for bit."""
import random
import re

import pytest

from atom_ao.ops import kv_decode_gqa as gqa

MASK = 0xFFFFFFFF


def _run(asm: str, w0: int, w1: int) -> list[int]:
    regs = {"$8": w0, "$9": w1}

    def val(x):
        x = x.strip()
        return int(x, 16) if x.startswith("0x") else int(x) if x.isdigit() else regs[x]

    for ins in asm.strip("{} ").split(";"):
        ins = ins.strip()
        if not ins or ins.startswith(".reg"):
            continue
        op, args = ins.split(None, 1)
        args = [a.strip() for a in args.split(",")]
        if op == "prmt.b32":  # d.byte i = byte sel[i] of {b, a} (a: bytes 0-3, b: 4-7)
            a, b, sel = val(args[1]), val(args[2]), val(args[3])
            pool = a | (b << 32)
            regs[args[0]] = sum(((pool >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))
        elif op == "lop3.b32":
            a, b, c, lut = (val(x) for x in args[1:])
            out = 0
            for bit in range(32):  # the LUT indexed by (a, b, c) bits as (0xF0, 0xCC, 0xAA)
                idx = ((a >> bit) & 1) << 2 | ((b >> bit) & 1) << 1 | ((c >> bit) & 1)
                out |= ((lut >> idx) & 1) << bit
            regs[args[0]] = out
        elif op == "shr.u32":
            regs[args[0]] = (val(args[1]) & MASK) >> val(args[2])
        else:
            raise AssertionError(f"instruction the emulator does not know: {ins}")
    return [regs[f"${i}"] for i in range(8)]


def _want(w0: int, w1: int, magic: int, hi16: bool) -> list[int]:
    out = []
    for i in range(8):  # plane P = 4 i: low half word 0's, high half word 1's
        shift = 4 * i
        halves = []
        for w in (w0, w1):
            c = (w >> shift) & 15
            halves.append(magic | (c << 4 if hi16 and i % 2 else c))
        out.append(halves[0] | halves[1] << 16)
    return out


@pytest.mark.parametrize("form", ["bf16", "fp16", "fp16-hi16"])
def test_word_pairs_asm_matches_the_planes(form):
    asm, magic, hi16 = {"bf16": (gqa._word_pairs_asm(0x4300), 0x4300, False),
                        "fp16": (gqa._word_pairs_asm(0x6400), 0x6400, False),
                        "fp16-hi16": (gqa._word_pairs_hi16_asm(), 0x6400, True)}[form]
    assert len(re.findall(r"(prmt|lop3|shr)\.", asm)) == (12 if hi16 else 16)
    rng = random.Random(0)
    for w0, w1 in [(0, MASK), (0x76543210, 0xFEDCBA98)] + [(rng.getrandbits(32), rng.getrandbits(32))
                                                           for _ in range(200)]:
        assert _run(asm, w0, w1) == _want(w0, w1, magic, hi16)


def test_hi16_values_are_exact_fp16():
    # 0x6400 | (c << 4) is 1024 + 16 c in fp16 for every code: the in-place high nibble is exact
    import torch

    bits = torch.tensor([0x6400 | (c << 4) for c in range(16)], dtype=torch.int16)
    assert bits.view(torch.float16).tolist() == [1024.0 + 16 * c for c in range(16)]

"""Decode attention: INT4 paged KV cache (atom_ao::kv_decode_attention) vs torch SDPA (flash) on bf16.

    python benchmarks/bench_attention.py            # batch {1,16,64,256} x context {512..32768}, both models
    python benchmarks/bench_attention.py --quick    # a few cases

One query token per sequence, heads of Llama-2-7B (32 heads, MHA, head_dim 128) and Llama-3-8B
(32 query / 8 KV heads). Contenders, each timed in the same run on its own cache:

* ``int4``: ``torch.ops.atom_ao.kv_decode_attention`` (split kernel + reduce) over the INT4
  cache in pages of 64 tokens, block tables shuffled (as a serving engine's pages are);
* ``int4-rope`` (``--rope``): the same cache read as keys cached before RoPE
  (``AtomKVCache(k_before_rope=True)``): the kernel adds a K bias and rotates each dequantized
  key by its position (cos / sin table shared by all sequences, as a server's would be);
* ``sdpa``: ``F.scaled_dot_product_attention`` with the flash backend over the bf16 cache
  (B, kv_heads, ctx, 128); for GQA the query heads of a KV head are packed as its query rows
  (q: (B, kv_heads, G, 128), no mask), so flash reads each K/V byte once, as the INT4 kernel does.

Time: median of CUDA-graph replays (``triton.testing.do_bench_cudagraph`` via ``common.bench_us``);
one replay runs the contender over several copies of its cache (> 2x L2 together, rotating), so
small caches are read from HBM, not L2. GB/s counts the cache bytes each step must read (INT4:
codes + scale + zero per token and head; bf16: K and V), against the device copy bandwidth measured
at start-up (bytes read + written). A case
runs where its cache copies fit in 80 GB (``--mem-gb``). Results: table on stdout, JSON + markdown
under benchmarks/results/ named after the GPU.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (bench_us, gpu_name, kernel_us, markdown_table, measured_copy_bytes_per_s,  # noqa: E402
                    set_module_flag, write_results)

MODELS = {"llama2-7b": (32, 32, 128), "llama3-8b": (32, 8, 128)}  # heads, kv_heads, head_dim
BATCHES = [1, 16, 64, 256]
CONTEXTS = [512, 2048, 8192, 32768]
PAGE = 64
L2_BYTES = 50e6
COPY = [3.0e12]  # bytes/s of a device copy, measured at start-up (main)
COLUMNS = ["model", "batch", "ctx", "path", "us", "GB/s", "copy_pct", "speedup", "MB"]


def int4_bytes(b, ctx, hkv, d):
    return 2 * b * ctx * hkv * (d // 2 + 4)  # K and V: codes + fp16 scale + fp16 zero


def bf16_bytes(b, ctx, hkv, d):
    return 2 * b * ctx * hkv * d * 2


def cold_copies(nbytes: float) -> int:
    """How many copies of a case's cache a timed call cycles through: together at least twice the
    L2, so each call reads from HBM (1 to 128)."""
    return max(1, min(128, int(-(-2 * L2_BYTES // nbytes))))


def make_int4(b, ctx, hkv, d, g):
    """A random INT4 cache (codes, scales, zeros of realistic size) and a shuffled block table."""
    import atom_ao.ops.kv_decode_attention  # noqa: F401  (registers the op)

    pages = -(-ctx // PAGE)
    n = b * pages
    kc = torch.randint(0, 256, (n, hkv, PAGE, d // 2), dtype=torch.uint8, device="cuda", generator=g)
    vc = torch.randint(0, 256, (n, hkv, PAGE, d // 2), dtype=torch.uint8, device="cuda", generator=g)
    meta = lambda: torch.stack([torch.rand(n, hkv, PAGE, device="cuda", generator=g) * 0.1 + 0.01,  # noqa: E731
                                -torch.rand(n, hkv, PAGE, device="cuda", generator=g)], dim=2).to(torch.bfloat16)
    table = torch.randperm(n, device="cuda", generator=g).to(torch.int32).view(b, pages)
    lens = torch.full((b,), ctx, dtype=torch.int32, device="cuda")
    return kc, vc, meta(), meta(), table, lens


def run_case(model, b, ctx, mem_gb, do_int4=True, do_sdpa=True, do_rope=False):
    h, hkv, d = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(b * 100003 + ctx)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    scale = d ** -0.5
    rows, times = [], {}
    rope = ()
    if do_rope:
        from atom_ao.kv.rope import rope_table
        from gpt import inv_freq

        rope = (rope_table(inv_freq(10000.0, d, "cuda"), -(-ctx // PAGE) * PAGE, "cuda"),
                torch.randn(hkv, d, device="cuda", generator=g))
    for path, nbytes in (("int4", int4_bytes(b, ctx, hkv, d)), ("int4-rope", int4_bytes(b, ctx, hkv, d)),
                         ("sdpa", bf16_bytes(b, ctx, hkv, d))):
        if (path == "int4" and not do_int4) or (path == "sdpa" and not do_sdpa) or (path == "int4-rope" and not do_rope):
            continue
        copies = cold_copies(nbytes)
        if copies * nbytes > mem_gb * 1e9:
            print(f"  {model} B={b} ctx={ctx} {path}: {copies * nbytes / 1e9:.0f} GB does not fit, skipped")
            continue
        try:
            if path.startswith("int4"):
                caches = [make_int4(b, ctx, hkv, d, g) for _ in range(copies)]
                extra = rope if path == "int4-rope" else ()

                def fn():
                    for c in caches:
                        torch.ops.atom_ao.kv_decode_attention(q, *c[:6], None, scale, ctx, *extra)
            else:
                kv = [(torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.bfloat16, generator=g),
                       torch.randn(b, hkv, ctx, d, device="cuda", dtype=torch.bfloat16, generator=g))
                      for _ in range(copies)]
                qs = q.view(b, hkv, h // hkv, d)  # GQA: a KV head's query heads as its query rows

                def fn():
                    from torch.nn.attention import SDPBackend, sdpa_kernel

                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        for k, v in kv:
                            F.scaled_dot_product_attention(qs, k, v, scale=scale)
            us = bench_us(fn) / copies
        except torch.OutOfMemoryError:
            print(f"  {model} B={b} ctx={ctx} {path}: out of memory, skipped")
            us = None
        finally:
            caches = kv = None
            torch.cuda.empty_cache()
        if us is None:
            continue
        times[path] = us
        gbs = nbytes / us / 1e3
        rows.append({"model": model, "batch": b, "ctx": ctx, "path": path, "us": round(us, 2),
                     "GB/s": round(gbs, 1), "copy_pct": round(100 * gbs * 1e9 / COPY[0], 1),
                     "MB": round(nbytes / 1e6, 1)})
    for r in rows:
        r["speedup"] = round(times["sdpa"] / times[r["path"]], 2) if "sdpa" in times else None
    return rows


def check(model="llama3-8b", b=3, ctx=3000):
    """One case against SDPA on the dequantized cache (a sanity check of what is timed)."""
    from atom_ao.kv.format import gather_kv

    h, hkv, d = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(0)
    kc, vc, km, vm, table, lens = make_int4(b, ctx, hkv, d, g)
    q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
    out = torch.ops.atom_ao.kv_decode_attention(q, kc, vc, km, vm, table, lens, None, d ** -0.5, ctx).float()
    k, v = gather_kv(kc, km, table), gather_kv(vc, vm, table)
    ref = F.scaled_dot_product_attention(q.float().reshape(b, hkv, h // hkv, d), k, v, scale=d ** -0.5).reshape(b, h, d)
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"check {model} B={b} ctx={ctx}: relative error vs float32 SDPA on the dequantized cache {rel:.2e}")
    assert rel < 2e-2, rel


def _timed(label, model, b, ctx, width=58):
    """One INT4 decode case (no SDPA) of the explore modes, printed as a labelled line."""
    rows = run_case(model, b, ctx, 70, do_sdpa=False)
    print(f"  {label:<{width}} {rows[0]['us']:>9} us {rows[0]['copy_pct']:>5}% of copy", flush=True)


def explore(models):
    """Each decode-kernel config on its own (the autotuner's list, one at a time), for MHA the
    kernel with its codes' offsets subtracted per code (``MHA_FOLD`` off), for GQA the pairs unpack and the
    nibble-plane kernel (``kv_decode_gqa``), and the autotuner's picks."""
    import atom_ao.ops.kv_decode_attention as dec
    import atom_ao.ops.kv_tiles as tiles

    timed = functools.partial(_timed, width=44)

    for model, b, ctx in (("llama2-7b", 64, 8192), ("llama2-7b", 64, 1024), ("llama2-7b", 16, 8192),
                          ("llama2-7b", 1, 32768),
                          ("llama3-8b", 64, 8192), ("llama3-8b", 1, 32768)):
        if model not in models:
            continue
        print(f"{model} B={b} ctx={ctx}")
        dec.ONE_WARP_GQA = False  # the generic kernel's 4- and 8-warp configs (GQA's default is one warp)
        mha = MODELS[model][0] == MODELS[model][1]
        tuner = dec._decode_mha_tuned if mha else dec._decode_split_tuned
        configs = list(tuner.configs)
        for cfg in configs:
            tuner.configs, tuner.cache = [cfg], {}
            timed(str(cfg), model, b, ctx)
        tuner.configs, tuner.cache = configs, {}
        timed("autotuned", model, b, ctx)
        print("    picked:", list(tuner.cache.values())[-1] if tuner.cache else None)
        if mha:
            dec.MHA_FOLD, tuner.cache = False, {}  # the codes' offsets subtracted per code
            timed("autotuned, offsets not folded", model, b, ctx)
            print("    picked:", list(tuner.cache.values())[-1] if tuner.cache else None)
            dec.MHA_FOLD, tuner.cache = True, {}
        else:  # codes unpacked two per instruction by inline asm (kv_tiles.UNPACK_BY_PAIRS)
            tiles.UNPACK_BY_PAIRS, tuner.cache = True, {}
            timed("autotuned, unpack by pairs (asm)", model, b, ctx)
            tiles.UNPACK_BY_PAIRS, tuner.cache = False, {}
            # the nibble-plane kernel (kv_decode_gqa, off by default): each config, then autotuned
            dec.GQA_KERNEL = True
            gqa_tuner = dec._decode_gqa_tuned
            gqa_configs = list(gqa_tuner.configs)
            try:
                for cfg in gqa_configs:
                    gqa_tuner.configs, gqa_tuner.cache = [cfg], {}
                    timed(f"gqa kernel {cfg}", model, b, ctx)
                gqa_tuner.configs, gqa_tuner.cache = gqa_configs, {}
                timed("gqa kernel, autotuned", model, b, ctx)
            finally:
                dec.GQA_KERNEL, gqa_tuner.configs, gqa_tuner.cache = False, gqa_configs, {}
            dec.ONE_WARP_GQA = True
            timed("default (one warp a program)", model, b, ctx)
    dec.ONE_WARP_GQA = True


def explore_warps(models):
    """GQA decode (Llama-3-8B heads) on the generic kernel's tensor-core path: the 4-warp autotuned
    configs against one warp a program (the default: its split rule, ``one_warp_splits``), the
    one-warp path at forced splits, and at two other step sizes."""
    import triton

    import atom_ao.ops.kv_decode_attention as dec

    one = dec._decode_one_warp_tuned
    one_default = list(one.configs)
    rule = dec.one_warp_splits
    cases = [("llama3-8b", 64, 1024), ("llama3-8b", 64, 8192), ("llama3-8b", 16, 8192), ("llama3-8b", 16, 1024),
             ("llama3-8b", 1, 32768), ("llama3-8b", 1, 4096), ("llama3-8b", 256, 2048)]
    try:
        for model, b, ctx in cases:
            if model not in models:
                continue
            h, hkv, d = MODELS[model]
            picked = rule(b, hkv, ctx, d // 2, torch.device("cuda"))
            print(f"{model} B={b} ctx={ctx} (one-warp rule: {picked or 'the 4-warp path'}"
                  f"{' splits' if picked else ''})")
            dec.ONE_WARP_GQA = False
            _timed("4-warp configs, autotuned", model, b, ctx)
            dec.ONE_WARP_GQA = True
            _timed("default", model, b, ctx)
            for s in (1, 2, 4, 8, 16, 32, 128):
                if s != picked and s <= triton.cdiv(ctx, dec.ONE_WARP_MIN_SPLIT_TOKENS):
                    dec.one_warp_splits = lambda *_a, s=s: s
                    _timed(f"one warp, {s} splits", model, b, ctx)
            dec.one_warp_splits = rule
            if picked:
                for bn, st in ((16, 3), (64, 2)):
                    one.configs = [triton.Config({"BLOCK_N": bn, "PREFETCH": False}, num_warps=1, num_stages=st)]
                    one.cache = {}
                    _timed(f"one warp, BLOCK_N {bn} stages {st}", model, b, ctx)
                one.configs, one.cache = one_default, {}
    finally:
        one.configs, one.cache = one_default, {}
        dec.ONE_WARP_GQA, dec.one_warp_splits = True, rule


def explore_planes(models, small_only=False):
    """GQA decode (Llama-3-8B heads): ``kv_decode_gqa``'s one-warp form (``ONE_WARP_PLANES``)
    against the generic one-warp kernel where a wave of one-warp programs exists (batch 16..256:
    each config, its split rule at 8 / 12 / 16 programs a SM), and at small batches, which the split
    rule sends to the 4-warp configs, the one-warp form at forced split counts."""
    import triton

    import atom_ao.ops.kv_decode_attention as dec

    one, planes = dec._decode_one_warp_tuned, dec._decode_gqa_warp_tuned
    one_default, planes_default = list(one.configs), list(planes.configs)
    resident, default, rule = dec.ONE_WARP_PLANES_RESIDENT, dec.ONE_WARP_PLANES, dec.one_warp_splits
    try:
        for model, b, ctx in (("llama3-8b", 64, 8192), ("llama3-8b", 64, 1024), ("llama3-8b", 16, 8192),
                              ("llama3-8b", 256, 2048)):
            if model not in models or small_only:
                continue
            print(f"{model} B={b} ctx={ctx}")
            dec.ONE_WARP_PLANES = False
            _timed("generic kernel, one warp", model, b, ctx)
            one.configs, one.cache = [triton.Config({"BLOCK_N": 32, "PREFETCH": False}, num_warps=1, num_stages=5)], {}
            _timed("generic one warp, 5 stages", model, b, ctx)
            one.configs, one.cache = one_default, {}
            dec.ONE_WARP_PLANES = True
            for bn, st in ((32, 5), (32, 3), (32, 4), (16, 5), (16, 7)):
                planes.configs, planes.cache = [triton.Config({"BLOCK_N": bn}, num_warps=1, num_stages=st)], {}
                _timed(f"planes one warp, BLOCK_N {bn} stages {st}", model, b, ctx)
            planes.configs, planes.cache = planes_default, {}
            for r in (8, 12, 16):
                dec.ONE_WARP_PLANES_RESIDENT = r
                _timed(f"planes one warp, split rule at {r} a SM", model, b, ctx)
            dec.ONE_WARP_PLANES_RESIDENT = resident
        for model, b, ctx in (("llama3-8b", 1, 32768), ("llama3-8b", 1, 4096), ("llama3-8b", 1, 1024),
                              ("llama3-8b", 4, 4096), ("llama3-8b", 16, 1024)):
            if model not in models:
                continue
            picked = rule(b, MODELS[model][1], ctx, MODELS[model][2] // 2, torch.device("cuda"), resident,
                          dec.PLANES_MIN_SPLIT_TOKENS, dec.PLANES_LEAST_WAVE)
            print(f"{model} B={b} ctx={ctx} (rule: {picked or 'the 4-warp path'})")
            dec.ONE_WARP_PLANES = default
            _timed("default", model, b, ctx)
            dec.ONE_WARP_PLANES = True
            for s in (4, 8, 16, 32, 64, 128, 256):
                if s <= triton.cdiv(ctx, 32) and s != picked:
                    dec.one_warp_splits = lambda *_a, s=s: s
                    _timed(f"planes one warp, {s} splits", model, b, ctx)
            dec.one_warp_splits = rule
    finally:
        one.configs, one.cache, planes.configs, planes.cache = one_default, {}, planes_default, {}
        dec.ONE_WARP_PLANES, dec.ONE_WARP_PLANES_RESIDENT, dec.one_warp_splits = default, resident, rule


def explore_mha_planes(models):
    """MHA decode (Llama-2-7B heads): ``kv_decode_mha`` (the default) against the one-warp planes
    kernel (``MHA_PLANES``: the head padded to 8 on the dots' N side) at its split rule, and at
    forced split counts where the rule leaves the MHA kernel (small batch)."""
    import atom_ao.ops.kv_decode_attention as dec

    default, rule = dec.MHA_PLANES, dec.one_warp_splits
    try:
        for model, b, ctx in (("llama2-7b", 64, 8192), ("llama2-7b", 64, 1024), ("llama2-7b", 16, 8192),
                              ("llama2-7b", 256, 2048), ("llama2-7b", 1, 32768), ("llama2-7b", 4, 4096),
                              ("llama2-7b", 1, 1024)):
            if model not in models:
                continue
            h, hkv, d = MODELS[model]
            picked = rule(b, hkv, ctx, d // 2, torch.device("cuda"), dec.ONE_WARP_PLANES_RESIDENT,
                          dec.PLANES_MIN_SPLIT_TOKENS, dec.PLANES_LEAST_WAVE)
            print(f"{model} B={b} ctx={ctx} (planes rule: {picked or 'the MHA kernel'})")
            dec.MHA_PLANES = False
            _timed("MHA kernel", model, b, ctx)
            dec.MHA_PLANES = True
            if picked:
                _timed(f"planes one warp, rule ({picked} splits)", model, b, ctx)
            else:
                for n in (16, 32, 64):
                    dec.one_warp_splits = lambda *_a, n=n: n
                    _timed(f"planes one warp, {n} splits", model, b, ctx)
                dec.one_warp_splits = rule
    finally:
        dec.MHA_PLANES, dec.one_warp_splits = default, rule


def _cases(models, cases):
    """The (model, batch, context) cases of the models asked for."""
    return [case for case in cases if case[0] in models]


def _rule_case(dec, model, b, ctx):
    """A case's header with the planes kernel's split rule, then the default timed; returns the
    rule's split count."""
    h, hkv, d = MODELS[model]
    picked = dec.one_warp_splits(b, hkv, ctx, d // 2, torch.device("cuda"), dec.ONE_WARP_PLANES_RESIDENT,
                                 dec.PLANES_MIN_SPLIT_TOKENS, dec.PLANES_LEAST_WAVE)
    print(f"{model} B={b} ctx={ctx} (rule: {picked} splits)")
    _timed("default", model, b, ctx)
    return picked


def _timed_splits(dec, model, b, ctx, splits: dict[str, int]):
    """Each label's forced split count timed; the split rule restored after."""
    rule = dec.one_warp_splits
    try:
        for label, n in splits.items():
            dec.one_warp_splits = lambda *_a, n=n: n
            _timed(label, model, b, ctx)
    finally:
        dec.one_warp_splits = rule


def explore_long_splits(models):
    """Small batches: the planes kernel's split rule (enough splits for a wave, 64 tokens and up)
    against fewer, longer splits (a half down to a sixteenth of the rule's), each program then
    walking several steps with its loads pipelined, and the reduce combining fewer partials."""
    import atom_ao.ops.kv_decode_attention as dec

    cases = (("llama2-7b", 1, 1280), ("llama2-7b", 1, 8192), ("llama2-7b", 1, 32768), ("llama3-8b", 1, 1280),
             ("llama3-8b", 1, 4096), ("llama3-8b", 1, 8192), ("llama3-8b", 1, 32768), ("llama3-8b", 16, 8192))
    for model, b, ctx in _cases(models, cases):
        rule = _rule_case(dec, model, b, ctx)
        fewer = sorted({max(1, rule // f) for f in (2, 4, 8, 16)} - {rule}, reverse=True)
        _timed_splits(dec, model, b, ctx, {f"{n} splits ({-(-ctx // n)} tokens each)": n for n in fewer})


def explore_mha_batch(models):
    """MHA decode at a large batch and a generation's context (Llama-2-7B heads, as bench_generate's
    batch-64 step): the planes kernel's split rule gives one split (2048 one-warp programs, ~1.4
    waves at the 11-12 a SM that fit), against forced 2 / 3 / 4 splits (whole waves, plus the
    reduce kernel) and the pipeline's stages; a read-only pass (``torch.sum`` over 1 GiB) beside
    the copy as the ceiling of a kernel that only reads."""
    import triton

    import atom_ao.ops.kv_decode_attention as dec

    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    print(f"  read-only ceiling (torch.sum, 1 GiB): {x.numel() * 4 / bench_us(lambda: x.sum()) / 1e6:.2f} TB/s")
    del x
    planes = dec._decode_gqa_warp_tuned
    default_configs = list(planes.configs)
    try:
        cases = (("llama2-7b", 64, 1056), ("llama2-7b", 64, 2048), ("llama2-7b", 32, 1056))
        for model, b, ctx in _cases(models, cases):
            _rule_case(dec, model, b, ctx)
            _timed_splits(dec, model, b, ctx, {f"{n} splits": n for n in (2, 3, 4, 6)})
            for st in (3, 4, 6):
                planes.configs, planes.cache = [triton.Config({"BLOCK_N": 32}, num_warps=1, num_stages=st)], {}
                _timed(f"rule's splits, {st} stages", model, b, ctx)
            planes.configs, planes.cache = default_configs, {}
    finally:
        planes.configs, planes.cache = default_configs, {}


def explore_stages(models):
    """The planes kernel's pipeline depth. Its loop's first stages go to the block-table lookup, so
    the shared buffers of the word tiles grow only every other stage (offline, sm_90a: 1 buffer at
    3-4 stages, 2 at 5-6, 3 at 7-8, 4 at 9-10): the default 5 keeps one 32-token step (4 KB) in
    flight a program. Here 7 and 9 (two and three steps ahead), and each with the registers capped
    at 128 a thread with one split and 152 with several (Triton 3.9 offline builds 164-168; the
    H200's Triton 3.6 builds the default in 128). H200, session 29: both deeper forms slower
    (Llama-2-7B heads, batch 64 / 1056: 92.6 us at 5 stages, 110.3 at 7, 99.5 at 9)."""
    import triton

    import atom_ao.ops.kv_decode_attention as dec

    planes = dec._decode_gqa_warp_tuned
    default_configs = list(planes.configs)
    forms = [(f"{st} stages{' + register cap' if cap else ''}", st, cap)
             for st, cap in ((5, False), (7, False), (9, False), (7, True), (9, True))]
    try:
        cases = (("llama2-7b", 64, 1056), ("llama2-7b", 64, 2048), ("llama2-7b", 1, 32768),
                 ("llama3-8b", 64, 1056), ("llama3-8b", 64, 8192), ("llama3-8b", 1, 32768))
        for model, b, ctx in _cases(models, cases):
            splits = _rule_case(dec, model, b, ctx)
            for label, st, cap in forms:
                reg_cap = (128 if splits <= 1 else 152) if cap else None
                cfgs = [triton.Config({"BLOCK_N": 32}, num_warps=1, num_stages=st, maxnreg=reg_cap)]
                planes.configs, planes.cache = cfgs, {}
                _timed(label, model, b, ctx)
            planes.configs, planes.cache = default_configs, {}
    finally:
        planes.configs, planes.cache = default_configs, {}


def explore_flag_ab(models, spec: str):
    """``--flag-ab MODULE:NAME[+NAME...]``: the INT4 decode with the named boolean flags all False,
    then all True, at the planes kernel's batch-64 generation contexts, batch 1 / 32768, and the
    small-batch cells short of 3x SDPA (batch 1 / 8192, Llama-3 batch 16 / 8192; e.g.
    ``atom_ao.ops.pdl:ENABLED``: the reduce launched while the split kernel runs) (the flags
    restored after)."""
    import importlib

    module, _, names = spec.partition(":")
    names = names.split("+")
    mod = importlib.import_module(module)
    saved = {n: getattr(mod, n, None) for n in names}
    for n in names:
        set_module_flag(module, n, False)  # a bad name stops here, before any timing
    try:
        cases = (("llama2-7b", 64, 1056), ("llama2-7b", 64, 2048), ("llama2-7b", 32, 1056), ("llama2-7b", 1, 32768),
                 ("llama2-7b", 1, 8192), ("llama3-8b", 64, 1056), ("llama3-8b", 64, 8192), ("llama3-8b", 1, 32768),
                 ("llama3-8b", 1, 8192), ("llama3-8b", 16, 8192))
        for model, b, ctx in _cases(models, cases):
            print(f"{model} B={b} ctx={ctx}")
            for value in (False, True):
                for n in names:
                    set_module_flag(module, n, value)
                _timed(f"{'+'.join(names)}={int(value)}", model, b, ctx)
    finally:
        for n, v in saved.items():
            setattr(mod, n, v)


def breakdown(models):
    """``--breakdown``: the small-batch cases still short of 3x SDPA (session 29) by kernel: the
    split kernel and the reduce, each in GPU us per call (profiler, plain launches), beside the
    CUDA-graph time of the whole call (its difference: what launching two kernels costs)."""
    cases = (("llama2-7b", 1, 8192), ("llama2-7b", 1, 32768), ("llama3-8b", 1, 8192), ("llama3-8b", 1, 32768),
             ("llama3-8b", 16, 8192))
    for model, b, ctx in _cases(models, cases):
        h, hkv, d = MODELS[model]
        g = torch.Generator(device="cuda").manual_seed(b * 100003 + ctx)
        q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
        copies = cold_copies(int4_bytes(b, ctx, hkv, d))
        caches = [make_int4(b, ctx, hkv, d, g) for _ in range(copies)]

        def fn():
            for c in caches:
                torch.ops.atom_ao.kv_decode_attention(q, *c[:6], None, d ** -0.5, ctx)

        graph_us = bench_us(fn) / copies
        kernels = {k: us / copies for k, us in kernel_us(fn).items()}
        print(f"{model} B={b} ctx={ctx}: {graph_us:.2f} us a call in a CUDA graph, "
              f"{sum(kernels.values()):.2f} us of kernels", flush=True)
        for name, us in kernels.items():
            print(f"  {us:8.2f} us  {name[:90]}")
        caches = None
        torch.cuda.empty_cache()


def explore_fill(models):
    """The planes kernel's split rule (8 one-warp programs a SM planned, ``ONE_WARP_PLANES_RESIDENT``)
    against forced splits filling 12 and 16 a SM (Triton 3.6 builds it in 128 registers, so 16
    fit): batch 1 at long contexts, and Llama-3-8B heads at batch 16 / 64, where the rule's splits
    leave ~8 a SM (Nsight Compute, batch 64 / 8192: 11% achieved occupancy)."""
    import atom_ao.ops.kv_decode_attention as dec

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = (("llama2-7b", 1, 32768), ("llama3-8b", 1, 32768), ("llama2-7b", 1, 8192), ("llama3-8b", 1, 8192),
             ("llama3-8b", 64, 8192), ("llama3-8b", 64, 1056), ("llama3-8b", 16, 8192))
    for model, b, ctx in _cases(models, cases):
        hkv = MODELS[model][1]
        _rule_case(dec, model, b, ctx)
        most = -(-ctx // dec.PLANES_MIN_SPLIT_TOKENS)
        fill = {per_sm: max(1, min(sms * per_sm // (b * hkv), most)) for per_sm in (12, 16)}
        _timed_splits(dec, model, b, ctx, {f"{n} splits ({per_sm} a SM)": n for per_sm, n in fill.items()})


def explore_splits(models):
    """Small batches, where a sequence's splits are all the parallel work: ``num_splits`` (~4
    programs a SM, none shorter than MIN_SPLIT_TOKENS) at shortest splits of 256 down to 32 tokens
    (more programs, each a shorter chain of dependent loads; one more partial each)."""
    import atom_ao.ops.kv_decode_attention as dec

    default = dec.MIN_SPLIT_TOKENS
    try:
        for model, b, ctx in (("llama2-7b", 1, 1024), ("llama2-7b", 1, 2048), ("llama2-7b", 1, 8192),
                              ("llama2-7b", 4, 1024), ("llama3-8b", 1, 1024), ("llama3-8b", 1, 8192)):
            if model not in models:
                continue
            print(f"{model} B={b} ctx={ctx}")
            for tokens in (256, 128, 64, 32):
                dec.MIN_SPLIT_TOKENS = tokens
                splits = dec.num_splits(b, MODELS[model][1], ctx, torch.device("cuda"))
                rows = run_case(model, b, ctx, 70, do_sdpa=False)
                print(f"  MIN_SPLIT_TOKENS {tokens:>4}{' (default)' if tokens == default else '':<10}: {splits:>3} "
                      f"splits {rows[0]['us']:>9} us {rows[0]['copy_pct']:>5}% of copy", flush=True)
    finally:
        dec.MIN_SPLIT_TOKENS = default


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few cases")
    ap.add_argument("--mem-gb", type=float, default=70.0, help="largest cache (all copies) to allocate")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--explore", action="store_true", help="each kernel config on a few cases, then exit")
    ap.add_argument("--explore-splits", action="store_true",
                    help="batch 1 and 4: the decode kernel at shorter splits than the default, then exit")
    ap.add_argument("--explore-warps", action="store_true",
                    help="GQA decode: one warp a program vs the 4-warp configs, split targets, then exit")
    ap.add_argument("--explore-planes", action="store_true",
                    help="GQA decode: the one-warp form of kv_decode_gqa against the generic one-warp kernel, then exit")
    ap.add_argument("--explore-planes-small", action="store_true",
                    help="the small-batch half of --explore-planes (forced splits), then exit")
    ap.add_argument("--explore-mha-planes", action="store_true",
                    help="MHA decode: the MHA kernel against the one-warp planes kernel, then exit")
    ap.add_argument("--explore-mha-batch", action="store_true",
                    help="MHA decode at batch 32-64, a generation's context: forced splits and stages, then exit")
    ap.add_argument("--explore-stages", action="store_true",
                    help="the planes kernel at 7 and 9 pipeline stages (2-3 steps of loads in flight), with and "
                         "without a register cap, then exit")
    ap.add_argument("--explore-long-splits", action="store_true",
                    help="small batches: the planes kernel's split rule against fewer, longer splits, then exit")
    ap.add_argument("--explore-fill", action="store_true",
                    help="the planes kernel's split rule against splits filling 12 and 16 a SM, "
                         "then exit")
    ap.add_argument("--flag-ab", default=None, metavar="MODULE:NAME[+NAME...]",
                    help="boolean module flags (e.g. atom_ao.ops.kv_decode_attention:PLANES_HI16): the INT4 "
                         "decode with them all False, then all True, on a few cases, then exit")
    ap.add_argument("--breakdown", action="store_true",
                    help="the batch-1 / 16 cases short of 3x by kernel (split kernel, reduce), then exit")
    ap.add_argument("--rope", action="store_true", help="also time keys cached before RoPE (int4-rope)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention needs a CUDA GPU")
    COPY[0] = measured_copy_bytes_per_s()
    print(f"{gpu_name()}: device copy {COPY[0] / 1e12:.2f} TB/s (read + write), the copy_pct ceiling")
    check()
    explores = {  # the first flag given runs its explore mode, then exits
        "explore": explore, "explore_warps": explore_warps,
        "explore_planes_small": functools.partial(explore_planes, small_only=True), "explore_planes": explore_planes,
        "explore_mha_planes": explore_mha_planes, "explore_splits": explore_splits,
        "explore_mha_batch": explore_mha_batch, "explore_long_splits": explore_long_splits,
        "explore_fill": explore_fill, "explore_stages": explore_stages,
        "breakdown": breakdown,
    }
    if args.flag_ab:
        explore_flag_ab(args.models.split(","), args.flag_ab)
        return
    for flag, run in explores.items():
        if getattr(args, flag):
            run(args.models.split(","))
            return
    batches, contexts = (([1, 64], [2048, 32768]) if args.quick else (BATCHES, CONTEXTS))
    rows = []
    for model in args.models.split(","):
        for b in batches:
            for ctx in contexts:
                new = run_case(model, b, ctx, args.mem_gb, do_rope=args.rope)
                rows += new
                print(markdown_table(new, COLUMNS).split("\n", 2)[-1], flush=True)
    print(f"\n{gpu_name()}: decode attention, INT4 paged cache vs bf16 SDPA (flash)\n")
    print(markdown_table(rows, COLUMNS))
    long = [r for r in rows if r["path"] == "int4" and r["ctx"] >= 4096 and r["speedup"]]
    if long:
        print(f"\nctx >= 4096: speed-up over bf16 SDPA min {min(r['speedup'] for r in long):.2f}x, "
              f"median {sorted(r['speedup'] for r in long)[len(long) // 2]:.2f}x; INT4 copy bandwidth "
              f"min {min(r['copy_pct'] for r in long):.0f}%, median {sorted(r['copy_pct'] for r in long)[len(long) // 2]:.0f}%")
    stem = write_results("bench_attention", rows, COLUMNS, {"command": " ".join(sys.argv), "page_size": PAGE,
                                                            "copy_bytes_per_s": COPY[0],
                                                            "timing": "median of CUDA-graph replays"})
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()

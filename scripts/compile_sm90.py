"""Compile the INT4 KV and W4A4 GEMM Triton kernels for sm_90 (H100) on a machine without a GPU.

Catches type / layout / PTX errors before spending GPU time: `PYTHONPATH=. python scripts/compile_sm90.py`.
Prints each kernel's shared memory, registers-free summary and whether wgmma/mma is used.
``--loop-stats`` adds what one pass of each of a kernel's loops issues in PTX (instructions,
``bar.sync``, shared-memory stores / loads, warp shuffles, global loads), and of its first loop
in SASS (Triton's bundled ``nvdisasm``); ``--only TEXT`` compiles
only the forms whose label contains TEXT (e.g. ``--only gemv``); ``--gemv-configs 32x4x4,16x8x4``
compiles the gemv forms with those (BLOCK_N, CHUNK, warps) tiles.
"""
import importlib
import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from atom_ao.ops import kv_decode_attention as dec, kv_decode_gqa as gqa, kv_decode_mha as mha, kv_prefill_attention as pre, kv_tiles as tiles
from atom_ao.ops import kv_write as wr
gemm = importlib.import_module("atom_ao.ops.w4a4_gemm")  # the package re-exports the op under that name
unp = importlib.import_module("atom_ao.ops.w4a4_gemm_unpacked")
swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
gemv = importlib.import_module("atom_ao.ops.w4a4_gemv")
qa = importlib.import_module("atom_ao.ops.quantize_activation")

TARGET = GPUTarget("cuda", 90, 32)
LOOP_STATS = "--loop-stats" in sys.argv
ONLY = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
# the gemv's (BLOCK_N, CHUNK, warps) tiles to compile, e.g. --gemv-configs 32x4x4,16x8x4 (default: GEMV_CONFIG)
GEMV_CONFIGS = ([tuple(int(v) for v in c.split("x")) for c in sys.argv[sys.argv.index("--gemv-configs") + 1].split(",")]
                if "--gemv-configs" in sys.argv else None)


def _loops(lines: list[str], label: str, branch: str) -> list[list[str]]:
    """The instruction lines of each loop in ``lines`` (PTX or SASS text), in program order: from a
    label (``label`` matches it, group 1 its name) to the last branch back to it (``branch``)."""
    heads = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(label, line))}
    ends = {}
    for j, line in enumerate(lines):
        m = re.search(branch, line)
        if m and heads.get(m.group(1), j) < j:
            ends[m.group(1)] = j
    return [lines[heads[name]:j + 1] for name, j in sorted(ends.items(), key=lambda kv: heads[kv[0]])]


def loop_stats(ptx: str) -> str:
    """Counts over one pass of each loop in ``ptx``, in program order."""
    out = []
    for body in _loops(ptx.split("\n"), r"\s*(\$L__BB\d+_\d+):", r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);"):
        code = [line.strip() for line in body if line.strip().endswith(";") and not line.strip().startswith("//")]
        counts = {name: sum(1 for line in code if re.search(pat, line)) for name, pat in (
            ("bar.sync", r"^bar[.]sync"), ("st.shared", r"st[.]shared"), ("ld.shared", r"ld[.]shared"),
            ("shfl", r"^shfl"), ("ld.global", r"ld[.]global"))}
        out.append(f"loop {len(out) + 1}: {len(code)} instructions, " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "; ".join(out) or "no loop"


def sass_loop_stats(cubin: bytes) -> str:
    """The first loop's SASS (Triton's bundled nvdisasm): instructions, barriers, shuffles and
    shared-memory accesses in one pass."""
    import os
    import subprocess
    import tempfile

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.exists(nvdisasm):
        return "sass: no nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        lines = subprocess.run([nvdisasm, "-c", f.name], capture_output=True, text=True).stdout.split("\n")
    loops = _loops(lines, r"^(\.L_x_\d+):", r"BRA `\((\.L_x_\d+)\)")
    if not loops:
        return "sass: no loop"
    ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?", "", x).split()[0]
           for x in loops[0] if re.match(r"\s*/\*[0-9a-f]+\*/", x)]
    count = lambda prefix: sum(op.startswith(prefix) for op in ops)  # noqa: E731
    return (f"sass loop 1: {len(ops)} instructions, BAR {count('BAR')}, SHFL {count('SHFL')}, "
            f"LDS {count('LDS')}, STS {count('STS')}, I2F {count('I2F')}, FMUL {count('FMUL')}, "
            f"FFMA {count('FFMA')}, GMMA {sum('GMMA' in op for op in ops)}, LDG {count('LDG')}")


def sig_of(fn, types, consts):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = types.get(name, "i32")
    return sig


def compile_one(label, fn, types, consts, num_warps=4, num_stages=3, ptx_has=None, divisible=()):
    """``divisible``: more int arguments to compile as multiples of 16, as Triton's JIT specializes
    them at run time when they are (e.g. a K = 4096 linear's strides and group count)."""
    if ONLY not in label:
        return True
    sig = sig_of(fn, types, consts)
    # pointers, and the strides (s_*), which Triton's JIT specializes as multiples of 16 at run time
    ptrs = [i for i, n in enumerate(fn.arg_names) if sig[n].startswith("*") or n.startswith("s_") or n in divisible]
    attrs = {(i,): [["tt.divisibility", 16]] for i in ptrs}
    src = ASTSource(fn, sig, consts, attrs=attrs)
    try:
        c = triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {label}: {type(e).__name__}: {str(e)[:2000]}")
        return False
    ptx = c.asm["ptx"]
    if ptx_has and ptx_has not in ptx:
        print(f"FAIL {label}: no {ptx_has} in the PTX")
        return False
    print(f"ok   {label}: shared={c.metadata.shared} wgmma={'wgmma' in ptx} mma={'mma.sync' in ptx} "
          f"ptx_lines={ptx.count(chr(10))}"
          + (f" | {loop_stats(ptx)} | {sass_loop_stats(c.asm['cubin'])}" if LOOP_STATS else ""))
    return True


def gemm_kernels():
    ok = True
    common = dict(as_ptr="*fp32", aos_ptr="*fp32", ws_ptr="*fp32", wos_ptr="*fp32", bias_ptr="*bf16")
    for out in ("*bf16", "*fp32"):  # fp32: the split-K workspace
        types = dict(common, a_ptr="*u8", ao_ptr="*i8", w_ptr="*u8", wo_ptr="*i8", out_ptr=out)
        for bm, bn, w, st, pf in gemm._GEMM_REGIMES[64] + gemm._GEMM_REGIMES[1 << 62][-1:]:
            consts = dict(HALF=64, BLOCK_O=64, HAS_OUT=True, HAS_BIAS=True, USE_ASM=True, BLOCK_M=bm, BLOCK_N=bn,
                          GROUP_M=8, PREFETCH=pf)
            ok &= compile_one(f"gemm out={out} {bm}x{bn} prefetch={pf}", gemm._w4a4_gemm_kernel_jit, types, consts,
                              w, st)
        types = dict(common, a_ptr="*i32", ao_ptr="*i32", w_ptr="*i32", wo_ptr="*i32", out_ptr=out)
        # K = 4096 (G = 32: the JIT's ints all multiples of 16) and K = 11008 (G = 86: the scale
        # stride and group count not), each with one load a weight scale and with the copies
        k4096 = ("N", "G", "N_OUT_W", "stride_wn", "stride_wsn", "stride_won")
        k11008 = ("N", "N_OUT_W", "stride_wn", "stride_won")
        for even, pdl, l2, late, copies, k, div in (
                (False, False, 0, False, 1, 4096, k4096), (True, False, 0, False, 1, 4096, k4096),
                (True, True, 0, False, 1, 4096, k4096), (True, True, 0, True, 1, 4096, k4096),
                (False, True, 2, True, 1, 4096, k4096), (True, False, 0, False, 4, 4096, k4096),
                (False, True, 0, True, 4, 4096, k4096), (True, False, 0, False, 1, 11008, k11008),
                (True, False, 0, False, 4, 11008, k11008)):
            for bn, chunk, w in GEMV_CONFIGS or [gemv.GEMV_CONFIG]:
                consts = dict(WORDS=16, BLOCK_OW=32, HAS_OUT=True, HAS_BIAS=True, USE_ASM=True, EVEN_N=even,
                              BLOCK_N=bn, CHUNK=chunk, PDL=pdl, L2_AHEAD=l2, RELEASE_LATE=late, SCALE_COPIES=copies)
                ok &= compile_one(f"gemv {bn}x{chunk}x{w} out={out} K={k} even={even} pdl={pdl} l2_ahead={l2} "
                                  f"late={late} scale_copies={copies}", gemv._w4a4_gemv_kernel, types, consts, w, 1,
                                  ptx_has="prefetch.global.L2" if l2 else "griddepcontrol.wait" if pdl else None,
                                  divisible=div)
    types = dict(common, a_ptr="*u8", ao_ptr="*i8", w_ptr="*u8", wo_ptr="*i8", out_ptr="*fp32")
    for bn, bm, w, st in sorted({c for cs in swap._SWAP_REGIMES.values() for c in cs}):
        for even, out_share in ((False, 0), (True, 0), (True, swap.OUT_SHARE or 2)):  # OUT_SHARE: outliers in split 0 only
            consts = dict(HALF=64, BLOCK_O=64, HAS_OUT=True, HAS_BIAS=True, USE_ASM=True, BLOCK_N=bn, BLOCK_M=bm,
                          EVEN_N=even, EVEN_M=even, OUT_SHARE=out_share)
            # the ints of an aligned shape (e.g. Llama-2-7B o at M = 64) as the JIT specializes them
            ok &= compile_one(f"swap gemm {bn}x{bm} even={even} out_share={out_share}", swap._w4a4_gemm_swap_kernel_jit,
                              types, consts, w, st,
                              divisible=("N", "G", "N_OUT", "stride_am", "stride_asm", "stride_aom", "stride_wn",
                                         "stride_wsn", "stride_won", "stride_om"))
    # the activation quantizer at decode (its first small config), plain and with PDL
    qtypes = dict(a_ptr="*bf16", b_ptr="*bf16", w_ptr="*bf16", rstd_ptr="*fp32", perm_ptr="*i32", q_ptr="*u8",
                  s_ptr="*fp32", qo_ptr="*i8", so_ptr="*fp32", clip_ratio="fp32")
    cfg = qa._configs(small=True)[0]
    # (producer, PDL, perm loaded before the wait): plain, RMSNorm
    for mode, pdl, perm_first in ((2, False, False), (2, True, False), (2, True, True), (0, True, True)):
        consts = dict(MODE=mode, X_KIND=2, OUT_KIND=2, CAST_FIRST=False, HALF=64, HALF_P=64, BLOCK_O=128, N_OUT_C=128,
                      COL_MASK=False, LANES_FIRST=qa._LANES_FIRST, HAS_OUT=True, PTX=True, IDX64=False, PDL=pdl,
                      PERM_FIRST=perm_first, **cfg.kwargs)
        ok &= compile_one(f"quantize_activation {cfg.kwargs} mode={mode} pdl={pdl} perm_first={perm_first}",
                          qa._quantize_activation_kernel, qtypes, consts, cfg.num_warps, cfg.num_stages,
                          ptx_has="griddepcontrol.wait" if pdl else None)
    ok &= compile_one("sum_splits", gemm._sum_splits_kernel, dict(ws_ptr="*fp32", out_ptr="*bf16"),
                      dict(SPLITS_P=8, BLOCK=512))
    # the large-M path: unpack to INT8, then the INT8 group GEMM
    ok &= compile_one("unpack rows", unp._unpack_rows_kernel, dict(src_ptr="*u8", dst_ptr="*i8"),
                      dict(HALF=64, BLOCK_R=16, BLOCK_G=16))
    types = dict(common, a_ptr="*i8", ao_ptr="*i8", w_ptr="*i8", wo_ptr="*i8", out_ptr="*bf16")
    for bm, bn, w, st, pf in unp._CONFIGS:
        consts = dict(GS=128, BLOCK_O=64, HAS_OUT=True, HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, GROUP_M=8,
                      PREFETCH_SCALES=pf)
        ok &= compile_one(f"int8 group gemm {bm}x{bn} prefetch={pf}", unp._int8_group_gemm_kernel_jit, types, consts,
                          w, st)
    return ok


def main():
    ok = gemm_kernels()
    for dt, tdt in (("bf16", tl.bfloat16), ("fp16", tl.float16)):
        import torch
        tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dt]
        # kv_write
        types = {n: f"*{dt}" for n in ("k_ptr", "v_ptr")}
        types.update(slot_ptr="*i32", kc_ptr="*u8", vc_ptr="*u8", km_ptr=f"*{dt}", vm_ptr=f"*{dt}")
        for half in (32, 64):
            for rotate, pdl in ((False, False), (True, False), (False, True)):
                ok &= compile_one(f"kv_write {dt} D={2*half} rotate={rotate} pdl={pdl}", wr._kv_write_kernel, types,
                                  dict(HALF=half, BLOCK_R=32, ROTATE_K=rotate, ROTATE_V=rotate, DOT=tdt, PREC="tf32",
                                       PDL=pdl), ptx_has="griddepcontrol.wait" if pdl else None)
        # the nibble-plane GQA decode kernel (off by default): codes as OFFSET + c
        types = dict(q_ptr=f"*{dt}", kc_ptr="*i32", vc_ptr="*i32", km_ptr=f"*{dt}", vm_ptr=f"*{dt}", bt_ptr="*i32",
                     len_ptr="*i32", start_ptr="*i32", out_ptr=f"*{dt}", part_ptr="*fp32", ml_ptr="*fp32",
                     qk_scale="fp32")
        # and its one-warp form (WARP: heads on the dots' N side, inline-asm unpack)
        # (HI16, one-warp form only: fp16 dots with the high nibbles in place, for bf16 queries too)
        for warp, hi16, cfgs in ((False, False, gqa.gqa_configs()), (True, False, dec.gqa_warp_configs()),
                                 (True, True, dec.gqa_warp_configs())):
            for cfg in cfgs:
                for one, page, g in ((True, 64, 4), (False, 24, 7)):
                    magic = 0x6400 if hi16 else dec.magic_bits(tdtype, False) & 0xFFFF
                    consts = dict(G=g, BLOCK_G=8 if warp else 16, HALF=64, PAGE=page, HAS_START=True, ONE_SPLIT=one,
                                  DOT=tl.float16 if hi16 else tdt, MAGIC=magic,
                                  OFFSET=128.0 if magic == 0x4300 else 1024.0, WARP=warp, ASM=warp, HI16=hi16,
                                  PDL=hi16 and not one, **cfg.kwargs)  # PDL in one of the forms
                    ok &= compile_one(f"decode gqa {dt} {cfg.kwargs} w{cfg.num_warps} one={one} page={page} warp={warp} "
                                      f"hi16={hi16} pdl={consts['PDL']}", gqa.decode_gqa_kernel, types, consts,
                                      cfg.num_warps, cfg.num_stages,
                                      ptx_has="griddepcontrol.wait" if consts["PDL"] else None)
        # decode split
        types = dict(q_ptr=f"*{dt}", kc_ptr="*u8", vc_ptr="*u8", km_ptr=f"*{dt}", vm_ptr=f"*{dt}", bt_ptr="*i32",
                     len_ptr="*i32", start_ptr="*i32", out_ptr=f"*{dt}", part_ptr="*fp32", ml_ptr="*fp32",
                     rope_ptr="*fp32", kb_ptr="*fp32", qk_scale="fp32")
        for g, half, one, page, bn, w, st, rope in (
                (1, 64, True, 16, 64, 4, 3, False), (4, 64, False, 16, 128, 8, 3, False),
                (7, 32, False, 64, 64, 4, 4, False), (4, 32, True, 256, 128, 8, 4, False),
                (1, 64, False, 64, 64, 4, 3, True), (7, 32, False, 64, 64, 4, 4, True)):  # keys before RoPE
            fma = g <= dec.FMA_MAX_G  # the launcher's choice: CUDA-core float32 path for small groups
            consts = dict(G=g, BLOCK_G=triton.next_power_of_2(g) if fma else max(16, triton.next_power_of_2(g)),
                          HALF=half, PAGE=page, HAS_START=True, ONE_SPLIT=one,
                          DOT=tl.float32 if fma else tdt,
                          MAGIC=dec.F32_MAGIC.value if fma else dec.magic_bits(tdtype, False),
                          PREC="tf32", FMA=fma, ROPE=rope, HAS_KBIAS=rope, BLOCK_N=bn, PREFETCH=bn == 64,
                          PDL=g == 4)  # PDL in two of the forms
            ok &= compile_one(f"decode {dt} G={g} D={2*half} one={one} page={page} BN={bn} rope={rope} "
                              f"prefetch={bn == 64} pdl={g == 4}", dec._decode_split_kernel, types, consts, w, st,
                              ptx_has="griddepcontrol.wait" if g == 4 else None)
            if not fma:  # the codes unpacked two per instruction (kv_tiles.UNPACK_BY_PAIRS)
                consts["MAGIC"] = consts["MAGIC"] | tiles.BY_PAIRS.value
                ok &= compile_one(f"decode {dt} G={g} D={2*half} BN={bn} rope={rope} pairs", dec._decode_split_kernel,
                                  types, consts, w, st)
        mtypes = {k: v for k, v in types.items() if k not in ("rope_ptr", "kb_ptr")}
        mtypes.update(kc_ptr="*i32", vc_ptr="*i32")  # the caches viewed as int32 words
        for half, page, one in ((64, 64, True), (64, 16, False), (32, 64, False), (128, 64, True)):
            for cfg in mha.mha_configs():
                fold = (half, page) != (32, 64)  # one case with the offsets subtracted per code (MHA_FOLD off)
                consts = dict(HALF=half, PAGE=page, HAS_START=True, ONE_SPLIT=one, ASM=True, ROWS=mha.ROWS,
                              FOLD=fold, **cfg.kwargs)
                label = f"decode mha {dt} D={2*half} page={page} one={one} fold={fold} {cfg.kwargs}"
                ok &= compile_one(label, mha.decode_mha_kernel, mtypes, consts, cfg.num_warps, cfg.num_stages)
        for pdl in (False, True):
            ok &= compile_one(f"decode reduce {dt} pdl={pdl}", dec._decode_reduce_kernel,
                              dict(part_ptr="*fp32", ml_ptr="*fp32", out_ptr=f"*{dt}"), dict(D=128, SPLITS_P=8, PDL=pdl),
                              ptx_has="griddepcontrol.wait" if pdl else None)
        for half, splits in ((32, 1), (64, 1), (64, 3), (64, 33), (64, 100)):  # 16 to 1 rows a program
            ok &= compile_one(f"decode reduce rotate {dt} D={2 * half} splits={splits}", dec._decode_reduce_rotate_kernel,
                              dict(part_ptr="*fp32", ml_ptr="*fp32", out_ptr=f"*{dt}"),
                              dict(HALF=half, **dec.reduce_rotate_tiling(splits), DOT=tl.bfloat16, SPLIT_HI_LO=True))
        # prefill
        for from_cache in (False, True):
            kt = "*u8" if from_cache else f"*{dt}"
            types = dict(q_ptr=f"*{dt}", k_ptr=kt, v_ptr=kt, km_ptr=f"*{dt}", vm_ptr=f"*{dt}", bt_ptr="*i32",
                         len_ptr="*i32", start_ptr="*i32", out_ptr=f"*{dt}", rope_ptr="*fp32", kb_ptr="*fp32",
                         qk_scale="fp32")
            for g, half, bm, bn, w in ((1, 64, 128, 64, 8), (4, 32, 64, 64, 4)):
                for rope in ((False, True) if from_cache else (False,)):
                    consts = dict(G=g, HALF=half, PAGE=16, HAS_START=False, FROM_CACHE=from_cache, DOT=tdt,
                                  MAGIC=dec.magic_bits(tdtype, False), PREC="tf32", ROPE=rope, HAS_KBIAS=rope,
                                  BLOCK_M=bm, BLOCK_N=bn)
                    ok &= compile_one(f"prefill {dt} cache={from_cache} G={g} D={2*half} BM={bm} rope={rope}",
                                      pre._prefill_kernel, types, consts, w, 3)
                    if from_cache:  # the codes unpacked two per instruction (kv_tiles.UNPACK_BY_PAIRS)
                        consts["MAGIC"] = consts["MAGIC"] | tiles.BY_PAIRS.value
                        ok &= compile_one(f"prefill {dt} G={g} D={2*half} BM={bm} rope={rope} pairs",
                                          pre._prefill_kernel, types, consts, w, 3)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

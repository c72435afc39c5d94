"""What Inductor's mutation analysis says each atom_ao Triton kernel writes, on CPU.

Run as a script WITHOUT ``TRITON_INTERPRET`` (``test_kernel_writes.py`` does): every op's launcher
is called on small CPU tensors with ``wrap_triton`` replaced by a recorder (nothing launches), and
each recorded launch goes through the analysis torch.compile runs on a user Triton kernel
(``triton_kernel_wrap``: TTIR for an sm_90 target, then the stores traced back to the kernel's
arguments). An argument the analysis counts as written is cloned before the kernel and copied
back after it in the compiled graph; for a weight that is the whole weight on every call (session
16: 4 ms of copies a Llama-2-7B decode step). Prints one JSON line per launch:
{"case", "kernel", "written": [argument names], "bad": [written arguments that are the op's inputs]}.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "needs compiled kernels (TTIR), not the interpreter"

import torch  # noqa: E402
import triton.runtime as triton_runtime  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402


class _Sm90Target:
    """The analysis only asks the active driver for its target; no GPU is touched."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


triton_runtime.driver.set_active(_Sm90Target())

import importlib  # noqa: E402

import atom_ao.ops  # noqa: E402,F401

# the modules (atom_ao.ops re-exports some ops under their module's name)
(kv_decode_attention, kv_prefill_attention, kv_write, quantize_activation, w4a4_gemm, w4a4_gemm_swap,
 w4a4_gemm_unpacked, w4a4_gemv, fused_quantize) = (
    importlib.import_module(f"atom_ao.ops.{m}") for m in (
        "kv_decode_attention", "kv_prefill_attention", "kv_write", "quantize_activation", "w4a4_gemm",
        "w4a4_gemm_swap", "w4a4_gemm_unpacked", "w4a4_gemv", "fused_quantize"))
from torch._higher_order_ops import triton_kernel_wrap as tkw  # noqa: E402

_LAUNCHES: list = []


class _Recorder:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kw = dict(zip(_jit(self.kernel).arg_names, args))
            kw.update(kwargs)
            _LAUNCHES.append((self.kernel, kw))
        return launch


for _m in (kv_decode_attention, kv_prefill_attention, kv_write, quantize_activation, w4a4_gemm, w4a4_gemm_swap,
           w4a4_gemm_unpacked, w4a4_gemv, fused_quantize):
    if hasattr(_m, "wrap_triton"):
        _m.wrap_triton = _Recorder
for _m in (w4a4_gemm, kv_decode_attention):
    _m._sm_count = lambda *_: 132


def _jit(kernel):
    """The JITFunction (an autotuned kernel wraps one)."""
    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def _written(kernel, kwargs) -> list[str]:
    kwargs = {k: v for k, v in kwargs.items() if k in _jit(kernel).arg_names}
    if hasattr(tkw, "identify_accessed_tensors"):  # newer torch (2.13); older: identify_mutated_tensors
        acc = tkw.identify_accessed_tensors(kernel, kwargs, {})
        return sorted(d.name for d in acc.read_writes.writes)
    return sorted(tkw.identify_mutated_tensors(kernel, kwargs, {}))


def _report(case: str, inputs: list) -> None:
    """Analyse the launches recorded since the last report; ``inputs``: tensors the op only reads."""
    ptrs = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    for kernel, kw in _LAUNCHES:
        written = _written(kernel, kw)
        bad = [n for n in written if isinstance(kw.get(n), torch.Tensor)
               and kw[n].untyped_storage().data_ptr() in ptrs]
        name = _jit(kernel).fn.__name__
        print(json.dumps({"case": case, "kernel": name, "written": written, "bad": bad}), flush=True)
    _LAUNCHES.clear()


# the tests' operand builders (and their conftest helpers)
sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]


def _gemm_cases():
    from test_w4a4_gemm_triton import _operands

    for m, path, splits in ((1, "gemv", 1), (1, "gemv", 2), (16, "swap", 1), (16, "swap", 2), (64, "swap", 1),
                            (300, None, 1), (300, None, 2), (300, "unpacked", 1)):
        args = _operands(m, 64, 512, 32, 128, torch.bfloat16, True)
        w4a4_gemm.w4a4_gemm_triton(*args, 128, torch.bfloat16, splits=splits, path=path)
        _report(f"w4a4_gemm m={m} path={path} splits={splits}", args)


def _quantize_cases():
    x = torch.randn(4, 512, dtype=torch.bfloat16)
    perm = torch.randperm(512).to(torch.int32)
    quantize_activation.quantize_activation_triton(x, perm, 32, 128, 0.9)
    _report("quantize_activation", [x, perm])
    from atom_ao.ops.rmsnorm_quantize import rmsnorm_quantize_triton
    from atom_ao.ops.silu_mul_quantize import silu_mul_quantize_triton

    w = torch.randn(512, dtype=torch.bfloat16)
    for m in (1, 300):
        xm = torch.randn(m, 512, dtype=torch.bfloat16)
        rmsnorm_quantize_triton(xm, w, 1e-6, perm, 32, 128, 0.9)
        _report(f"rmsnorm_quantize m={m}", [xm, w, perm])
        # the tile kernel (fused_quantize.py; RMSNorm's statistic in-kernel up to RSTD_SPLIT_M rows)
        for asym in (False, True):
            rmsnorm_quantize_triton(xm, w, 1e-6, perm, 32, 128, 0.9, kernel="tile", asymmetric=asym)
            _report(f"rmsnorm_quantize m={m} tile asymmetric={asym}", [xm, w, perm])
        up = torch.randn(m, 512, dtype=torch.bfloat16)
        for kernel in ("stream", "tile"):
            silu_mul_quantize_triton(xm, up, perm, 32, 128, 0.9, kernel=kernel)
            _report(f"silu_mul_quantize m={m} {kernel}", [xm, up, perm])


def _kv_cases():
    from test_kv_attention import paged_cache

    for heads, kv_heads, d, page in ((4, 4, 128, 32), (8, 2, 64, 16), (8, 2, 128, 32)):
        lens = [70, 200]
        caches, table = paged_cache(lens, kv_heads, d, page_size=page)
        q = torch.randn(len(lens), heads, d, dtype=torch.bfloat16)
        seq_lens = torch.tensor(lens, dtype=torch.int32)
        kv_start = torch.tensor([0, 5], dtype=torch.int32)
        inputs = [q, *caches, table, seq_lens, kv_start]
        for hint in (0, 32768):
            kv_decode_attention.kv_decode_attention_triton(q, *caches, table, seq_lens, kv_start, d ** -0.5, hint)
            _report(f"kv_decode heads={heads}/{kv_heads} d={d} hint={hint}", inputs)
        kv_decode_attention.kv_decode_attention_triton(q, *caches, table, seq_lens, kv_start, d ** -0.5, 0,
                                                       v_rotated=True)  # the rotating combine
        _report(f"kv_decode heads={heads}/{kv_heads} d={d} v_rotated", inputs)
        if heads == kv_heads:  # MHA without the planes kernel: kv_decode_mha
            kv_decode_attention.MHA_PLANES, saved = False, kv_decode_attention.MHA_PLANES
            kv_decode_attention.kv_decode_attention_triton(q, *caches, table, seq_lens, kv_start, d ** -0.5, 0)
            kv_decode_attention.MHA_PLANES = saved
            _report(f"kv_decode heads={heads}/{kv_heads} d={d} MHA_PLANES=False", inputs)
        kv_prefill_attention.kv_prefill_attention_triton(q[:, :, None].expand(-1, -1, 2, -1).contiguous(), *caches,
                                                         table, seq_lens, kv_start, d ** -0.5)
        _report(f"cached prefill heads={heads}/{kv_heads} d={d}", inputs)
        k = torch.randn(3, kv_heads, d, dtype=torch.bfloat16)
        v = torch.randn(3, kv_heads, d, dtype=torch.bfloat16)
        slots = torch.tensor([0, 7, 40])
        kv_write.kv_write_triton(k, v, slots, *caches)
        _report(f"kv_write kv_heads={kv_heads} d={d}", [k, v, slots])
        qp = torch.randn(len(lens), heads, 16, d, dtype=torch.bfloat16)
        kp = torch.randn(len(lens), kv_heads, 16, d, dtype=torch.bfloat16)
        vp = torch.randn(len(lens), kv_heads, 16, d, dtype=torch.bfloat16)
        kv_prefill_attention.prefill_attention_triton(qp, kp, vp, kv_start, d ** -0.5)
        _report(f"prefill heads={heads}/{kv_heads} d={d}", [qp, kp, vp, kv_start])


def _triton36_waits(hook: bool):
    """Lower ``gdc_wait`` / ``gdc_launch_dependents`` as Triton 3.6 does (the GPU machine's Triton:
    side-effecting inline asm without operands; later Triton has ops for them), and install
    atom_ao.ops.pdl's Inductor hook (as a PDL launch does) when ``hook``."""
    from triton.language import core
    from triton.language.extra import cuda

    def asm(text):
        @core.extern
        def lowered(_semantic=None):
            return core.inline_asm_elementwise(text, "=r", [], dtype=core.int32, is_pure=False, pack=1,
                                               _semantic=_semantic)
        return lowered

    cuda.gdc_wait = asm("griddepcontrol.wait; // dummy $0")
    cuda.gdc_launch_dependents = asm("griddepcontrol.launch_dependents; // dummy $0")
    if hook:
        importlib.import_module("atom_ao.ops.pdl").install_inductor_hook()


def _pdl_cases(prefix="pdl"):
    """The same launches with programmatic dependent launch on (atom_ao.ops.pdl; the gemv also
    prefetching into L2): its waits and the prefetch's inline asm must not look like writes."""
    pdl = importlib.import_module("atom_ao.ops.pdl")
    pdl.wanted = lambda t, on, one_token=False: True  # CPU tensors: the switch would say no
    w4a4_gemv.GEMV_L2_AHEAD = 2
    from test_kv_attention import paged_cache
    from test_w4a4_gemm_triton import _operands

    for splits in (1, 2):
        args = _operands(1, 64, 512, 32, 128, torch.bfloat16, True)
        w4a4_gemm.w4a4_gemm_triton(*args, 128, torch.bfloat16, splits=splits, path="gemv")
        _report(f"{prefix} w4a4_gemm m=1 gemv splits={splits}", args)
    x = torch.randn(1, 512, dtype=torch.bfloat16)
    perm = torch.randperm(512).to(torch.int32)
    quantize_activation.quantize_activation_triton(x, perm, 32, 128, 0.9)
    _report(f"{prefix} quantize_activation", [x, perm])
    caches, table = paged_cache([70, 200], 2, 128, page_size=32)
    q = torch.randn(2, 8, 128, dtype=torch.bfloat16)
    seq_lens = torch.tensor([70, 200], dtype=torch.int32)
    kv_decode_attention.kv_decode_attention_triton(q, *caches, table, seq_lens, None, 128 ** -0.5, 32768)
    _report(f"{prefix} kv_decode heads=8/2 d=128", [q, *caches, table, seq_lens])
    k, v = torch.randn(2, 2, 128, dtype=torch.bfloat16), torch.randn(2, 2, 128, dtype=torch.bfloat16)
    slots = torch.tensor([0, 7])
    kv_write.kv_write_triton(k, v, slots, *caches)
    _report(f"{prefix} kv_write", [k, v, slots])


if __name__ == "__main__":
    # pdl36 last: it replaces Triton's wait lowering for the rest of the process
    for group in sys.argv[1:] or ["gemm", "quantize", "kv", "pdl", "pdl36"]:
        if group.startswith("pdl36"):  # pdl36-unhooked: Inductor's analysis as it is (fails)
            _triton36_waits(hook=group == "pdl36")
        {"gemm": _gemm_cases, "quantize": _quantize_cases, "kv": _kv_cases, "pdl": _pdl_cases,
         "pdl36": lambda: _pdl_cases("pdl36"), "pdl36-unhooked": lambda: _pdl_cases("pdl36")}[group]()

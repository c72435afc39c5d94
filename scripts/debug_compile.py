"""Compile atom_ao's ops with Inductor on the GPU, one at a time, and print full tracebacks.

    TORCHINDUCTOR_COMPILE_THREADS=1 python scripts/debug_compile.py
(one compile thread: a kernel that fails to compile raises in this process, with its traceback).
"""
import torch
from torchao.quantization import quantize_

import atom_ao
import atom_ao.ops.kv_decode_attention  # noqa: F401


def attempt(label, fn, *args):
    torch._dynamo.reset()
    try:
        out = torch.compile(fn, fullgraph=True)(*args)
        torch.cuda.synchronize()
        print(f"ok   {label}")
        return out
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {label}")
        seen = 0
        while e is not None and seen < 12:  # the innermost Triton error says what is wrong
            print(f"  [{seen}] {type(e).__name__}: {str(e)[-1500:]}")
            e, seen = e.__cause__ or e.__context__, seen + 1


def main():
    lin = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    quantize_(lin, atom_ao.atom_config())
    w = lin.weight
    x = torch.randn(8, 4096, device="cuda", dtype=torch.bfloat16)
    q = lambda x: torch.ops.atom_ao.quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)  # noqa: E731
    a = attempt("quantize_activation", q, x)
    if a is None:
        a = q(x)
    g = lambda *a: torch.ops.atom_ao.w4a4_gemm(*a, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, None,  # noqa: E731
                                              w.group_size, torch.bfloat16)
    attempt("w4a4_gemm M=8", g, *a)
    attempt("linear M=8", lin, x)
    attempt("linear M=1", lin, x[:1])
    b, hkv, h, d, page, pages = 2, 2, 8, 128, 16, 8
    kc = torch.randint(0, 256, (b * pages, hkv, page, d // 2), dtype=torch.uint8, device="cuda")
    meta = torch.rand(b * pages, hkv, 2, page, device="cuda").to(torch.bfloat16)
    table = torch.arange(b * pages, dtype=torch.int32, device="cuda").view(b, pages)
    lens = torch.full((b,), 100, dtype=torch.int32, device="cuda")
    q = torch.randn(b, h, d, device="cuda", dtype=torch.bfloat16)
    dec = lambda q: torch.ops.atom_ao.kv_decode_attention(q, kc, kc, meta, meta, table, lens, None, d ** -0.5, 128)  # noqa: E731
    attempt("kv_decode_attention", dec, q)


if __name__ == "__main__":
    with torch.no_grad():
        main()

"""One Llama decoder layer, torch.compile'd: bf16 vs Atom W4A4 without and with the
atom_ao.inductor fusion pass (RMSNorm+quantize, silu*up+quantize, one quantize per shared input).

    python benchmarks/bench_layer.py                  # GPU: Llama-2-7B / Llama-3-8B shapes, M in {1, 16, 1024, 4096}
    python benchmarks/bench_layer.py --cpu --tiny     # CPU smoke run (hidden 256, M in {1, 16})

Rows: median microseconds per layer forward (``triton.testing.do_bench``: with CUDA-graph
replays, and plainly launched, where the Python launch cost of extern ops shows), kernel
launches per forward (GPU: CUDA kernels in a profiler trace; CPU: kernel and extern calls in
the generated code) and the atom_ao quantize launches among them. Decode rows are M
sequences of one token; prefill rows one sequence of M tokens (causal attention). Results:
``benchmarks/results/bench_layer[_tiny]_<gpu>.{json,md}``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_us, gpu_name, markdown_table, write_results  # noqa: E402

SHAPES = {  # hidden, intermediate, heads, kv heads
    "llama2-7b": (4096, 11008, 32, 32),
    "llama3-8b": (4096, 14336, 32, 8),
}
TINY = {"tiny": (256, 512, 4, 2)}
MS = [1, 16, 1024, 4096]
VARIANTS = ("bf16", "atom", "atom+passes")
COLUMNS = ["shape", "M", "variant", "us_graph", "us_plain", "vs_bf16", "launches", "quantize_launches"]
QUANT_OPS = ("quantize_activation", "rmsnorm_quantize", "silu_mul_quantize")


def make_layer(shape, device, quantized: bool):
    from torchao.quantization import quantize_
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from atom_ao import atom_config
    from atom_ao.fold import fold_mlp_permutations

    hidden, inter, heads, kv = shape
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv, num_hidden_layers=1)
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, 0).eval().to(device=device, dtype=torch.bfloat16)
    if quantized:
        quantize_(layer, atom_config(inductor_passes=False))  # the pass is switched per variant below
        fold_mlp_permutations(layer)  # down_proj's permutation -> identity (issue item 4)
    return layer, LlamaRotaryEmbedding(cfg).to(device)


def inputs(shape, m: int, device, rope):
    hidden = shape[0]
    b, s = (m, 1) if m <= 16 else (1, m)  # decode: m sequences of one token; prefill: one of m
    x = torch.randn(b, s, hidden, device=device, dtype=torch.bfloat16)
    pos = torch.arange(s, device=device)[None].expand(b, -1)
    return x, rope(x, pos)


def compile_variant(layer, variant: str, x, pe):
    """Compile with the pass on or off; returns (fn, generated code)."""
    from torch._inductor.utils import run_and_get_code

    import atom_ao.inductor as ai

    ai.install() if variant == "atom+passes" else ai.uninstall()
    torch._dynamo.reset()
    fn = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        _, codes = run_and_get_code(fn, x, position_embeddings=pe)
    return (lambda: fn(x, position_embeddings=pe)), "\n".join(codes)


def code_launches(code: str) -> int:
    """Kernel and extern calls in Inductor's generated wrapper (the CPU stand-in for a trace)."""
    calls = re.findall(r"^\s+(?:\w+ = )?(cpp_fused_\w+\(|\w+\.run\(|extern_kernels\.\w+\(|torch\.ops\.\w+\.\w+)",
                       code, flags=re.M)
    return len(calls)


def cuda_launches(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.lower().startswith(("memcpy", "memset")))


def quantize_launches(code: str) -> int | str:
    n = sum(code.count(f"torch.ops.atom_ao.{op}.default(") for op in QUANT_OPS)
    return n if n else "inlined"  # without the pass the quantizer is inlined (Triton on GPU)


def time_us(fn, device: str, use_graph: bool) -> float:
    with torch.no_grad():
        if device == "cpu":
            import time

            fn()
            t = time.perf_counter()
            for _ in range(3):
                fn()
            return (time.perf_counter() - t) / 3 * 1e6
        return bench_us(fn, use_graph=use_graph)


def run(shapes: dict, ms: list[int], device: str, variants=VARIANTS) -> list[dict]:
    rows = []
    for name, shape in shapes.items():
        layers = {}
        for m in ms:
            base = None
            for variant in variants:
                q = variant != "bf16"
                if q not in layers:
                    layers[q] = make_layer(shape, device, q)
                layer, rope = layers[q]
                x, pe = inputs(shape, m, device, rope)
                fn, code = compile_variant(layer, variant, x, pe)
                row = dict(shape=name, M=m, variant=variant,
                           us_graph=time_us(fn, device, True),
                           us_plain=time_us(fn, device, False) if device != "cpu" else float("nan"),
                           launches=cuda_launches(fn) if device != "cpu" else code_launches(code),
                           quantize_launches=quantize_launches(code) if q else 0)
                base = base or row["us_graph"]
                row["vs_bf16"] = base / row["us_graph"]
                rows.append(row)
                print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU (the atom ops run their references)")
    p.add_argument("--tiny", action="store_true", help="hidden 256, M in {1, 16}: a smoke run")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma list of " + ", ".join(SHAPES))
    p.add_argument("--ms", default=None, help="comma list of M (default 1,16,1024,4096; --tiny: 1,16)")
    args = p.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    shapes = TINY if args.tiny else {k: SHAPES[k] for k in args.shapes.split(",")}
    ms = [int(v) for v in args.ms.split(",")] if args.ms else ([1, 16] if args.tiny else MS)
    print(f"bench_layer on {gpu_name() if device == 'cuda' else 'cpu'}")
    print("\n".join(markdown_table([], COLUMNS).splitlines()[:2]))
    import atom_ao.inductor as ai

    was = ai.is_installed()
    try:
        rows = run(shapes, ms, device)
    finally:
        ai.install() if was else ai.uninstall()
    stem = write_results("bench_layer_tiny" if args.tiny else "bench_layer", rows, COLUMNS,
                         meta=dict(device=device, ms=ms, shapes={k: list(v) for k, v in shapes.items()}))
    print(f"results: {stem}.md")
    return rows


if __name__ == "__main__":
    main()

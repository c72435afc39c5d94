"""Where does the first compiled generate of an Atom model spend its time? (cProfile)

    python scripts/compile_profile.py --layers 4 [--kv4] [--model smollm2-135m]
Session 20 (H200): Llama-2-7B's Atom + INT4 KV decode step took 233 s to compile through
transformers' generate (bf16: ~25 s); GraphLowering.run was 5-9x bf16's in the main job. This
prints the functions with the most cumulative and own time of the first generate (compile +
autotune + warm-up), and the time inside torch's Triton-kernel mutation analysis
(``identify_mutated_tensors`` / ``identify_accessed_tensors``: it lowers the kernel to TTIR at
every call site), the suspect; ``atom_ao.inductor.ttir_cache`` memoizes it (on by default since
session 21; ``--ttir-cache off`` profiles without it).
"""
import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_hf_generate as bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(bench.SHAPES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--kv4", action="store_true")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--ttir-cache", choices=["on", "off"], default="on",
                    help="memoize the mutation analysis (atom_ao.inductor.ttir_cache; on by default)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        bench.DEVICE = "cpu"  # a check of the script only: the CPU compiles other code
    import atom_ao
    from atom_ao.inductor import ttir_cache
    from torchao.quantization import quantize_

    if args.ttir_cache == "off":
        os.environ[ttir_cache.ENV_VAR] = "0"  # quantize_ installs atom_ao's pass, and with it the cache
        ttir_cache.uninstall()

    from atom_ao.__main__ import _generate

    model = bench.build(args.model, args.layers)
    quantize_(model, atom_ao.atom_config(), filter_fn=bench.decoder_linears)
    atom_ao.unwrap_weights(model)
    ids = torch.randint(100, 1000, (1, 16), device=bench.DEVICE)
    kw = bench.compile_kwargs()
    prof = cProfile.Profile()
    t = time.perf_counter()
    with torch.no_grad():
        prof.enable()
        _generate(model, ids, args.kv4, max_cache_len=32, do_sample=False, min_new_tokens=8, max_new_tokens=8,
                  pad_token_id=0, **kw)
        prof.disable()
    print(f"first generate: {time.perf_counter() - t:.1f} s ({args.model}, {args.layers} layers, kv4={args.kv4}, "
          f"ttir cache {'on: ' + str(ttir_cache.STATS) if ttir_cache.is_installed() else 'off'})")
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.top)
        print(s.getvalue())
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(
        "identify_mutated_tensors|identify_accessed_tensors|generate_ttir|get_mutated_tensors|autotune|benchmark_all_configs")
    print(s.getvalue())


if __name__ == "__main__":
    main()

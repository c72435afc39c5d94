"""Decode speed through transformers' own generate: bf16 vs Atom W4A4 vs Atom + INT4 KV cache.

    python benchmarks/bench_hf_generate.py --model smollm2-135m --paths bf16,atom,atom-kv4

What a transformers user gets: ``model.generate`` with a static cache, whose decode step
transformers compiles itself (torch.compile, mode "reduce-overhead": Inductor + CUDA graphs),
at batch 1. Random weights with a real model's shapes (speed only; the accuracy of the same
models: ``python -m atom_ao``); ``--layers`` cuts the depth for a quick run. Per path: the
first generate's seconds (compile + autotune), decode ms a token without the prompt
((t(long) - t(short)) / extra tokens, same cache length), tokens/s, Inductor's CUDA-graph
skips (a skipped graph launches each kernel from Python every step) and, with --profile,
CUDA launches and graph replays per decode token, the top CPU ops, and the CPU microseconds of a
decode step's compiled call: Dynamo's guards, the AOT wrapper around the graph (it unwraps each
quantized weight into its five tensors), the graph call (CUDA-graph replay and its input checks),
against the step's GPU time. Session 19 (H200, torch 2.11) found Atom's steps CPU-bound there:
each AtomQuantTensor weight costs ~38 us of Python per call (guards and the AOT unwrap). The
``-unwrapped`` paths run the same model after ``atom_ao.unwrap_weights`` (each quantized linear
an ``AtomLinear`` holding the weight's five tensors as plain buffers), ``-fused`` paths then after
``atom_ao.fuse_projections`` (q/k/v and gate/up one GEMM each); ``--freezing`` compiles
with Inductor freezing instead of mode "reduce-overhead". ``--generator atom_ao`` times
``atom_ao.generate`` instead (the same model and caches, one compiled step and no per-token host
loop: what is left of ``generate``'s own CPU time per token, ~2.9 ms at Llama-2-7B in session 20);
``--generator atom_ao_captured`` with ``capture=True`` (the step in a CUDA graph of its own, one
``replay()`` a token, ``atom_ao.generate``'s default on CUDA); ``--generator transformers_hook``
times transformers' ``generate`` with ``custom_generate=atom_ao.greedy_decoding`` (the same loop).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_kernels, exposed_us, gpu_name, markdown_table, results_dir, write_results  # noqa: E402

from atom_ao.eval.methods import decoder_linears  # noqa: E402  (quantize_'s filter: the LM head stays float)

# transformers config class and fields of each model (the same as ../shared/models.md's GGUFs)
SHAPES = {
    "smollm2-135m": ("LlamaConfig", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                         tie_word_embeddings=True, rope_theta=100000.0)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                         tie_word_embeddings=True, rope_theta=1000000.0)),
    # bench_generate.py's model, here through transformers' generate (what a transformers user sees)
    "llama2-7b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                      tie_word_embeddings=False, rope_theta=10000.0)),
}
# -plain: the INT4 cache without its Hadamard rotation (AtomKVCache(rotate=False): two small matmuls a
# layer fewer on each side of the cache, more quantization error)
# -fused: unwrapped, then atom_ao.fuse_projections (q/k/v and gate/up one GEMM each)
PATHS = ("bf16", "atom", "atom-kv4", "atom-unwrapped", "atom-kv4-unwrapped", "atom-kv4-plain-unwrapped",
         "atom-kv4-fused", "atom-kv4-plain-fused")
DEVICE = "cuda"  # the CPU smoke test sets "cpu" (compiled there too, without CUDA graphs)
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def build(name: str, layers: int | None):
    import transformers

    cls, fields = SHAPES[name]
    fields = dict(fields, max_position_embeddings=4096, **({"num_hidden_layers": layers} if layers else {}))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    with torch.device(DEVICE):  # built where it runs, in its dtype: a 7B model's CPU init takes minutes
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**fields), dtype=dtype)
    return model.eval()


def compile_kwargs(freezing: bool = False, skip_module_guards: bool = False) -> dict:
    """``generate``'s compile_config: transformers' default (mode "reduce-overhead") on a GPU;
    with freezing, skipped module guards or on the CPU one of our own."""
    if not freezing and not skip_module_guards and DEVICE == "cuda":
        return {}
    from transformers import CompileConfig

    # torch.compile takes a mode or options, not both: reduce-overhead is triton.cudagraphs
    options = {"freezing": freezing, "triton.cudagraphs": DEVICE == "cuda"}
    if skip_module_guards:  # torch's own filter: no guards on nn.Module attributes (the model must not change)
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_all_nn_modules_unsafe
    cfg = CompileConfig(mode=None, options=options)
    cfg._compile_all_devices = DEVICE != "cuda"  # the CPU smoke test compiles too (transformers' test flag)
    return {"compile_config": cfg}


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def cudagraph_counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}


GENERATORS = ("transformers", "transformers_hook", "atom_ao", "atom_ao_captured")


@torch.no_grad()
def run_path(model, path: str, prompt_len: int, short: int, long: int, profile: bool, compile_kw: dict,
             generator: str = "transformers", reset: bool = True) -> dict:
    """One path through one generator; the row has ``tokens`` (the long run's output) for the caller to
    compare generators on. ``reset``: a fresh Dynamo (the first generator of a path)."""
    import atom_ao
    from atom_ao.__main__ import _generate

    ids = torch.randint(100, 1000, (1, prompt_len), device=DEVICE,
                        generator=torch.Generator(DEVICE).manual_seed(0))  # the same prompt for every generator
    kv4 = path.startswith("atom-kv4")
    plain = "-plain" in path

    def plain_cache():  # one of our own for -plain, else None (the generators make the default one)
        from atom_ao.kv import AtomKVCache

        return AtomKVCache(model, max_cache_len=prompt_len + long, rotate=False) if plain else None

    def gen(n: int):
        if generator.startswith("atom_ao"):  # one compiled step, no generate loop (atom_ao.generate)
            impl = model.config._attn_implementation
            made = {"cache": plain_cache()} if plain else {"kv4": kv4, "max_cache_len": prompt_len + long}
            try:  # capture explicit: comparable across sessions
                out = atom_ao.generate(model, ids, n, capture=generator == "atom_ao_captured", **made)
            finally:
                if plain:  # our own INT4 cache switched the attention (atom_ao.generate's it switches back)
                    model.set_attn_implementation(impl)
            sync()
            return out
        if generator == "transformers_hook":  # generate's preparation, atom_ao's loop (custom_generate)
            out = _generate(model, ids, kv4, max_cache_len=prompt_len + long, cache=plain_cache(), do_sample=False,
                            max_new_tokens=n, pad_token_id=0, eos_token_id=None,
                            custom_generate=atom_ao.greedy_decoding)
            sync()
            return out
        out = _generate(model, ids, kv4, max_cache_len=prompt_len + long, cache=plain_cache(), do_sample=False,
                        min_new_tokens=n, max_new_tokens=n, pad_token_id=0, **compile_kw)
        sync()
        return out

    def seconds(n: int, reps: int = 3) -> float:
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            gen(n)
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]

    # one compiled entry per path: else a step first evaluates (and fails) the earlier paths' guards
    if reset:
        torch._dynamo.reset()
    before = cudagraph_counters()
    t = time.perf_counter()
    tokens = gen(long)  # compiles (and autotunes) the decode step
    first_s = time.perf_counter() - t
    gen(long)
    ms = 1e3 * (seconds(long) - seconds(short)) / (long - short)
    after = cudagraph_counters()
    row = {"path": path, "generator": generator, "first_generate_s": round(first_s, 1), "decode_ms": round(ms, 3),
           "new_tokens": tokens.shape[1] - prompt_len, "tokens": tokens,  # an early stop would skew decode_ms
           "tokens_per_s": round(1e3 / ms, 1),
           "cudagraph_skips": after.get("cudagraph_skips", 0) - before.get("cudagraph_skips", 0)}
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])) as p:
            gen(long)
        events = p.key_averages()
        counts = {e.key: e.count for e in events}
        row["launches_per_token"] = round(sum(counts.get(k, 0) for k in LAUNCH_EVENTS) / long, 1)
        row["graph_replays_per_token"] = round(counts.get("cudaGraphLaunch", 0) / long, 2)
        row.update(step_cpu_us(events))
        # every op of the profiled run, for where a token's time goes (syncs, copies, eager ops)
        table = events.table(sort_by="self_cpu_time_total", row_limit=80, max_name_column_width=70)
        (results_dir() / f"bench_hf_generate_{generator}_{path}_profile.txt").write_text(table)
        print("\n".join(table.splitlines()[:20]))
        row["kernels_us_per_token"] = kernels_per_token(events, long)
        print("GPU time a token by kernel (the prompt's forward included):", row["kernels_us_per_token"], flush=True)
        row["timeline_us_per_token"] = timeline_per_token(p, long)
        print("the same, each kernel charged only the time it adds (PDL overlaps once; host gaps over 50 us out):",
              row["timeline_us_per_token"], flush=True)
    print({k: v for k, v in row.items() if k != "tokens"}, {k: v - before.get(k, 0) for k, v in after.items()},
          flush=True)
    return row


def timeline_per_token(prof, tokens: int, top: int = 10) -> dict:
    """``common.exposed_us`` over the run's kernels: us a token by kind, the top kernels, idle."""
    from bench_generate import by_kind

    charged, idle = exposed_us(device_kernels(prof), tokens)
    return {"total": round(sum(charged.values()) + idle, 1), "idle": round(idle, 1), **by_kind(charged),
            "top": [(k[:60], round(v, 1)) for k, v in list(charged.items())[:top]]}


def kernels_per_token(events, tokens: int, top: int = 15) -> dict:
    """GPU microseconds a token by kernel kind (bench_generate's grouping), then the top kernels."""
    from bench_generate import by_kind

    per_kernel = {}
    for e in events:
        us = getattr(e, "self_device_time_total", 0) or 0
        if us > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.key] = per_kernel.get(e.key, 0.0) + us / tokens
    return {"total": round(sum(per_kernel.values()), 1), **by_kind(per_kernel),
            "top": [(k[:80], round(v, 1)) for k, v in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]]}


def step_cpu_us(events) -> dict:
    """Per compiled call, microseconds: Dynamo's guards, the AOT wrapper's own CPU time, the graph
    call's own CPU time, and the graph's GPU time (the compiled decode step is the most frequent
    compiled region; prefill runs eagerly)."""
    def per_call(prefix: str, field: str) -> float:
        evs = [e for e in events if e.key.startswith(prefix)]
        top = max(evs, key=lambda e: e.count, default=None)
        return round(getattr(top, field) / top.count, 1) if top is not None and top.count else 0.0

    return {"guards_us": per_call("TorchDynamo Cache Lookup", "self_cpu_time_total"),
            "wrapper_us": per_call("Torch-Compiled Region", "self_cpu_time_total"),
            "graph_call_us": per_call("## Call CompiledFxGraph", "self_cpu_time_total"),
            "graph_gpu_us": per_call("## Call CompiledFxGraph", "device_time_total")}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's)")
    ap.add_argument("--paths", default="bf16,atom,atom-kv4,atom-unwrapped,atom-kv4-unwrapped",
                    help="bf16 first, then any of " + ", ".join(PATHS[1:]))
    ap.add_argument("--freezing", action="store_true",
                    help="compile with Inductor freezing + CUDA graphs instead of mode reduce-overhead")
    ap.add_argument("--skip-module-guards", action="store_true",
                    help="compile_config options guard_filter_fn=torch.compiler.skip_guard_on_all_nn_modules_unsafe")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--short", type=int, default=8, help="new tokens of the short run")
    ap.add_argument("--long", type=int, default=200,
                    help="new tokens of the long run (CUDA: a graph is captured once a generate call; with 32 timed "
                         "tokens the same step read 1.8-3.5 ms on the H200, session 23, with 192 it did not spread so)")
    ap.add_argument("--profile", action="store_true", help="launch counts and top CPU ops of one long run")
    ap.add_argument("--generator", default="transformers",
                    help="one or more (comma-separated, each path through each in one process, tokens compared "
                         "with the first's) of: " + ", ".join(GENERATORS) + ": transformers' generate (_hook: with "
                         "custom_generate=atom_ao.greedy_decoding, atom_ao's loop inside it), or atom_ao.generate with "
                         "capture=False (one compiled reduce-overhead step, no per-token host loop) / capture=True "
                         "(_captured: the step in a CUDA graph of its own, atom_ao.generate's default on CUDA)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_hf_generate needs a GPU (transformers compiles decode steps only there)")
    import atom_ao
    from torchao.quantization import quantize_

    generators = args.generator.split(",")
    if any(g not in GENERATORS for g in generators):
        raise SystemExit(f"unknown generator in {args.generator!r}: {', '.join(GENERATORS)}")
    compile_kw = compile_kwargs(args.freezing, args.skip_module_guards)
    model = build(args.model, args.layers)
    rows, quantized = [], False
    for path in args.paths.split(","):
        if path not in PATHS:
            raise SystemExit(f"unknown path {path!r}: {', '.join(PATHS)}")
        if path != "bf16" and not quantized:  # data-free Atom W4A4 on every decoder linear
            quantize_(model, atom_ao.atom_config(), filter_fn=decoder_linears)
            quantized = True
        elif path == "bf16" and quantized:
            raise SystemExit("bf16 must come before the atom paths (the model is quantized in place)")
        if path != "bf16":
            atom_ao.unfuse_projections(model)  # a fused path before: one linear each again
            (atom_ao.unwrap_weights if path.endswith(("-unwrapped", "-fused")) else atom_ao.wrap_weights)(model)
            if path.endswith("-fused"):
                atom_ao.fuse_projections(model)
        first = None
        for i, generator in enumerate(generators):
            row = run_path(model, path, args.prompt, args.short, args.long, args.profile, compile_kw, generator,
                           reset=i == 0)
            tokens = row.pop("tokens")
            first = tokens if first is None else first
            row["same_tokens_as_first"] = bool(torch.equal(tokens, first))
            rows.append(dict(model=args.model, layers=model.config.num_hidden_layers, freezing=args.freezing,
                             module_guards=not args.skip_module_guards, **row))
    for r in rows:
        base = next((b["decode_ms"] for b in rows if b["path"] == "bf16" and b["generator"] == r["generator"]), None)
        r["speedup_vs_bf16"] = round(base / r["decode_ms"], 2) if base else ""
    cols = ["model", "layers", "generator", "path", "freezing", "module_guards", "first_generate_s", "decode_ms",
            "tokens_per_s", "speedup_vs_bf16", "new_tokens", "same_tokens_as_first", "cudagraph_skips"]
    if args.profile:
        cols += ["launches_per_token", "graph_replays_per_token", "guards_us", "wrapper_us", "graph_call_us",
                 "graph_gpu_us"]
    print(markdown_table(rows, cols))
    import transformers

    stem = write_results(f"bench_hf_generate_{args.model}{args.tag}", rows, cols,
                         {"gpu": gpu_name(), "torch": torch.__version__, "transformers": transformers.__version__,
                          "argv": sys.argv[1:]})
    print(f"wrote {stem}")
    if args.profile:  # where the first generates' seconds went (dynamo, AOT, Inductor phases)
        print(torch._dynamo.utils.compile_times())
    return rows


if __name__ == "__main__":
    main()

"""Generation throughput: bf16 vs torchao Float8 / Int8 vs atom_ao W4A4 (+ INT4 KV), one GPU.

    python benchmarks/bench_generate.py --model llama2-7b --batches 1,8,32,64

gpt-fast style (benchmarks/gpt.py): static KV cache of prompt + generated tokens, the decoder
block compiled once with torch.compile (one graph shared by all layers; --no-compile: eager) and
one decode step captured in a CUDA graph and replayed (no launch gaps), for every path alike.
``atom-kv4`` uses the INT4 paged cache (``gpt.Int4KVCache``: ``atom_ao::kv_write`` +
``prefill_attention`` for the prompt, ``kv_decode_attention`` for each new token);
``atom-kv4-rope`` the same with keys cached before RoPE (``AtomKVCache(k_before_rope=True)``:
the decode kernel adds the K bias back and rotates each key); ``atom-kv4-hadamard`` with K and V
stored Hadamard-rotated (``AtomKVCache``'s default, ``rotate=True``; the rotations inside
``kv_write`` and the decode's combining kernel, the queries' one small matmul).
Random weights: same shapes, same work. Reports prefill time, time per output token (median
over --steps decode steps at positions spread evenly over the --gen generated tokens: the bf16
paths' SDPA reads the whole static cache, prompt + gen, at every step, with a mask, as gpt-fast's
does, while the INT4 kernel reads each sequence's filled length, so a step's cost there grows
along the generation), decode tokens/s, the same as a generation loop runs it (``loop_tpot_ms``:
all --gen positions back to back, the argmax fed back on the device, one sync at the end, so each
replay is queued while the step before still runs), peak memory, and the largest batch whose weights
+ KV cache fit --budget-gb (computed from the bytes per token of each KV format).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (device_kernels, exposed_us, gpu_name, gpu_state, log_autotune_picks, markdown_table,  # noqa: E402
                    pdl_launch_report, per_call_us, results_dir, set_module_flag, summarize_graph_dot,
                    write_results)
from gpt import SHAPES, Llama  # noqa: E402


def _not_head(module, fqn):
    return isinstance(module, torch.nn.Linear) and "lm_head" not in fqn


def build(shape, path: str, n_layers: int | None, compile_blocks: bool = True, pack: bool = False,
          compile_scope: str = "block"):
    from torchao.quantization import quantize_

    s = replace(shape, n_layers=n_layers or shape.n_layers)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Llama(s)
    torch.set_default_dtype(prev)
    model.eval()
    if path.startswith("atom"):
        import atom_ao

        quantize_(model, atom_ao.atom_config(), filter_fn=_not_head)
    elif path == "fp8":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_not_head)
    elif path == "int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_not_head)
    if pack:
        print(f"{path}: weights packed into one allocation of {pack_weights(model):.2f} GiB", flush=True)
    # every path alike: one compiled decoder block shared by all layers (Inductor fuses the
    # norms, RoPE and each path's activation quantization), then a CUDA graph around the step
    torch._dynamo.reset()
    Llama.reset_compiled()
    model.compile_blocks = compile_blocks
    model.compile_scope = compile_scope
    return model


def pack_weights(model: torch.nn.Module, align: int = 512) -> float:
    """Move every parameter's data (a tensor subclass's inner tensors too) into one new allocation,
    each storage at an ``align``-byte offset, and return its GiB. A process's later builds lost most
    of PDL's gain at batch 1 (session 41): this tests whether where the weights land is why."""
    owners = []  # (parameter or subclass, attribute or None for .data, tensor)
    for p in model.parameters():
        names = getattr(p, "tensor_data_names", None)
        if names:
            owners += [(p, n, getattr(p, n)) for n in names if isinstance(getattr(p, n, None), torch.Tensor)]
        else:
            owners.append((p, None, p.data))
    spans, total = {}, 0  # storage pointer -> (offset in the arena, the storage)
    for _, _, t in owners:
        storage = t.untyped_storage()
        if storage.data_ptr() not in spans:
            spans[storage.data_ptr()] = (total, storage)
            total += -(-storage.nbytes() // align) * align
    arena = torch.empty(total, dtype=torch.uint8, device="cuda")
    for off, storage in spans.values():
        whole = torch.empty(0, dtype=torch.uint8, device="cuda").set_(storage)
        arena[off:off + storage.nbytes()].copy_(whole)
    for owner, name, t in owners:
        off = spans[t.untyped_storage().data_ptr()][0]  # a multiple of align, so of the element size
        moved = torch.as_strided(arena.view(t.dtype), t.shape, t.stride(), off // t.element_size() + t.storage_offset())
        if name is None:
            owner.data = moved
        else:
            setattr(owner, name, moved)
    gc.collect()
    torch.cuda.empty_cache()
    return total / 2**30


def run_plan(args) -> list[tuple[str, str, bool | None, str]]:
    """(path, activation-scale layout, --flag-ab value or None, row label) of each build, in order:
    every atom path once per layout of --act-scales and per value of --flag-ab (in --ab-order:
    False, then True by default); other paths once, with the first layout and the flag left alone.
    A value built a second time gets its build's number in the label (``=0#2``)."""
    layouts = args.act_scales.split(",")
    if any(v not in ("group", "row") for v in layouts):
        raise SystemExit(f"--act-scales: group and/or row, got {args.act_scales!r}")
    flag_name = args.flag_ab.split(":")[1] if args.flag_ab else None
    order = args.ab_order
    if not order or set(order) - {"0", "1"}:
        raise SystemExit(f"--ab-order: a string of 0 and 1 (e.g. 01, 10, 0110), got {order!r}")
    plan = []
    for path in args.paths.split(","):
        atom = path.startswith("atom")
        for layout in layouts if atom else layouts[:1]:
            seen = {}
            for flag in ([c == "1" for c in order] if atom and flag_name else [None]):
                label = f"{path}/{layout}-scales" if atom and len(layouts) > 1 else path
                label += "" if flag is None else f"/{flag_name}={int(flag)}"
                seen[flag] = seen.get(flag, 0) + 1
                label += f"#{seen[flag]}" if seen[flag] > 1 else ""
                plan.append((path, layout, flag, label))
    return plan


def set_act_scales(layout: str):
    # by module path: the package re-exports the op under the module's name
    set_module_flag("atom_ao.ops.quantize_activation", "GROUP_MAJOR_SCALES", layout == "group")


def kv_bytes_per_token(s, path: str) -> float:
    per_elem = 0.5 + 4 / s.head_dim if path.startswith("atom-kv4") else 2.0  # INT4 + fp16 scale/zero per head
    return 2 * s.n_layers * s.n_kv_heads * s.head_dim * per_elem


def int4_cache_factory(model, batch, max_len, before_rope: bool = False, hadamard: bool = False):
    from gpt import Int4KVCache

    s = model.s
    base = s.rope_base if before_rope else None
    return lambda layer: Int4KVCache(batch, s.n_kv_heads, max_len, s.head_dim, torch.bfloat16, "cuda", base,
                                     hadamard)


# kernel name -> where the decode step's time goes (the first match wins)
_KINDS = [("atom gemm", ("w4a4_gemm", "w4a4_gemv", "sum_splits")),
          ("atom quantize", ("quantize",)),
          ("attention", ("decode", "attention", "flash", "fmha", "sdpa", "prefill", "kv_write")),
          ("cuBLAS / torchao gemm", ("gemm", "nvjet", "xmma", "cutlass", "matmul", "scaled_mm", "int_mm")),
          # a graph input written back: a kernel seen as writing its inputs (session 16: the weights,
          # 4 ms a step; tests/ops/test_kernel_writes.py) or a cache update not done in place
          ("Inductor copy_ into an input", ("fused_copy_",)),
          ("fused elementwise (Inductor)", ("triton_",))]


def _kind(name: str) -> str:
    low = name.lower()
    return next((k for k, keys in _KINDS if any(x in low for x in keys)), "other")


def by_kind(per_kernel: dict[str, float]) -> dict[str, float]:
    """{kernel name: us} -> {kind (``_kind``): us}, largest first, rounded to 0.1 us."""
    kinds = {}
    for k, us in per_kernel.items():
        kinds[_kind(k)] = kinds.get(_kind(k), 0.0) + us
    return {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


def profile_step(graph, reps: int = 5) -> dict:
    """GPU time per decode step by kernel (a profiler trace of CUDA-graph replays)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    per_kernel = per_call_us(prof.key_averages(), reps)
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    # with PDL a kernel's duration includes its wait for the one before, so the sums above overlap;
    # the timeline's charges (exposed_us) add up to the step
    exposed, idle = exposed_us(device_kernels(prof), reps)
    return {"gpu_us_per_step": round(sum(per_kernel.values()), 1),
            "by_kind_us": by_kind(per_kernel),
            "top_kernels_us": [(k[:90], round(v, 1)) for k, v in top],
            "timeline_us_per_step": round(sum(exposed.values()) + idle, 1), "idle_us": round(idle, 1),
            "exposed_by_kind_us": by_kind(exposed),
            "exposed_top_us": [(k[:90], round(v, 1)) for k, v in list(exposed.items())[:14]]}


def decode_loop(replay, out, tok, step_pos, positions) -> None:
    """Decode ``positions`` back to back as a generation loop runs them: per token the position
    is set, the captured step replayed and its argmax fed back as the next input, all on the
    device, so nothing waits for the host and each graph launch is queued while the step before
    still runs (gpt-fast's loop; ``atom_ao.generate`` the same inside one graph)."""
    for p in positions:
        step_pos.fill_(p)
        replay()
        tok.copy_(out.argmax(-1, keepdim=True))


def timed_positions(prompt: int, gen: int, steps: int) -> list[int]:
    """``steps`` decode positions spread evenly over the generated tokens prompt .. prompt + gen - 1
    (all of them when steps >= gen)."""
    if steps >= gen:
        return list(range(prompt, prompt + gen))
    return [prompt + i * (gen - 1) // max(steps - 1, 1) for i in range(steps)]


@torch.no_grad()  # compiled for inference: with grad on, AOTAutograd traces a joint graph
def run_batch(model, path, batch, prompt, gen, steps, profile=False, graph_dump: str | None = None):
    """Prefill, then decode steps captured in a CUDA graph, timed alone and as a loop. ``graph_dump``:
    a DOT file to write the captured graph to (``CUDAGraph.debug_dump``); its counts are returned."""
    max_len = prompt + gen
    kv4 = path.startswith("atom-kv4")
    cache = int4_cache_factory(model, batch, max_len, path == "atom-kv4-rope", path == "atom-kv4-hadamard")
    model.setup_caches(batch, max_len, cache if kv4 else None)
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, model.s.vocab, (batch, prompt), device="cuda")
    pos = torch.arange(prompt, device="cuda")
    model(ids, pos)  # warm-up: autotuning, lazy init
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    logits = model(ids, pos)
    end.record()
    torch.cuda.synchronize()
    prefill_ms = start.elapsed_time(end)

    tok = logits.argmax(-1, keepdim=True)
    step_pos = torch.tensor([prompt], device="cuda")
    for _ in range(2):  # warm the decode shapes before capture
        model(tok, step_pos)
    graph = torch.cuda.CUDAGraph()
    if graph_dump:
        graph.enable_debug_mode()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        model(tok, step_pos)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = model(tok, step_pos)
    torch.cuda.current_stream().wait_stream(stream)
    dot = None
    if graph_dump:
        graph.debug_dump(graph_dump)
        dot = summarize_graph_dot(Path(graph_dump).read_text())
    times = []
    for p in timed_positions(prompt, gen, steps):
        step_pos.fill_(p)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        tok.copy_(out.argmax(-1, keepdim=True))
    tpot = sorted(times)[len(times) // 2]
    # the same steps in a loop: every generated position once, one sync at the end. The timing
    # above waits for each step alone; in a loop each replay is queued while the step before still
    # runs (session 39 found PDL paying only there, on a process's second build; session 41, each
    # build in its own process: Atom batch 1 2.09 ms a step alone, 2.10 in the loop).
    loop_positions = list(range(prompt, prompt + gen))
    decode_loop(graph.replay, out, tok, step_pos, loop_positions[:2])  # warm
    torch.cuda.synchronize()
    start.record()
    decode_loop(graph.replay, out, tok, step_pos, loop_positions)
    end.record()
    end.synchronize()
    loop_tpot = start.elapsed_time(end) / len(loop_positions)
    state = gpu_state()  # right after the loop: tells a slow build from a hot or throttled GPU
    out = {"prefill_ms": round(prefill_ms, 2), "tpot_ms": round(tpot, 3),
           "tokens_per_s": round(batch * 1e3 / tpot, 1), "loop_tpot_ms": round(loop_tpot, 3),
           "loop_tokens_per_s": round(batch * 1e3 / loop_tpot, 1),
           "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2), "gpu_state": state}
    if dot is not None:
        out["graph"] = dot
    if profile:  # at the middle timed position
        positions = timed_positions(prompt, gen, steps)
        step_pos.fill_(positions[len(positions) // 2])
        out["profile"] = profile_step(graph)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--paths", default="bf16,fp8,int8,atom,atom-kv4")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32,
                    help="decode steps timed, at positions spread evenly over the --gen generated tokens")
    ap.add_argument("--layers", type=int, default=None, help="fewer decoder layers (all layers are alike)")
    ap.add_argument("--budget-gb", type=float, default=80.0)
    ap.add_argument("--no-compile", action="store_true", help="eager blocks (still inside a CUDA graph)")
    ap.add_argument("--compile-scope", default="block", choices=("block", "step"),
                    help="block: one compiled decoder block shared by all layers; step: all layers as one graph "
                         "(gpt-fast's whole step: fusions across layers, a longer compile)")
    # on by default (session 25): what gpt-fast and serving engines run; --no-fused-qkv --no-fused-gate-up
    # give the seven linears a layer of a transformers Llama (earlier sessions' figures)
    ap.add_argument("--fused-qkv", action=argparse.BooleanOptionalAction, default=True,
                    help="one wqkv linear a layer, as gpt-fast has (every path alike), instead of wq, wk, wv")
    ap.add_argument("--fused-gate-up", action=argparse.BooleanOptionalAction, default=True,
                    help="one w13 linear a layer for the MLP's gate and up, as vLLM's gate_up_proj (every path "
                         "alike), instead of w1 and w3")
    ap.add_argument("--profile", action="store_true",
                    help="also trace a few decode steps: GPU time per step by kernel kind and the top kernels")
    ap.add_argument("--act-scales", default="group",
                    help="comma list of the activation scales' layout (group, row: quantize_activation's "
                         "GROUP_MAJOR_SCALES); each atom path runs once per layout (rows <path>/<layout>-scales "
                         "when more than one; Inductor's FX graph cache is then off)")
    ap.add_argument("--flag-ab", default=None, metavar="MODULE:NAME[+NAME...]",
                    help="boolean module flags (e.g. atom_ao.ops.kv_decode_attention:MHA_PLANES+ONE_WARP_PLANES): each "
                         "atom path runs with them all False, then all True (rows <path>/NAME=0|1; Inductor's FX "
                         "graph cache off)")
    ap.add_argument("--ab-order", default="01",
                    help="the --flag-ab builds' order, a string of 0 (all False) and 1 (all True), e.g. 10 or "
                         "0110. A later build of one process can time differently from an earlier one on the "
                         "same code (H200, session 40: an A/A of two identical builds at batch 1, 2.17 against "
                         "2.30 ms a token), so an A/B needs both orders")
    ap.add_argument("--inductor-pdl", action="store_true",
                    help="Inductor's programmatic dependent launch (its kernels wait on their producer inside the "
                         "kernel, so a launch overlaps the previous kernel's tail; Hopper, torch with "
                         "inductor.config.triton.enable_pdl)")
    # on by default (session 41): with PDL, a process's second Atom build timed 0.1-0.2 ms a token slower at
    # batch 1 than its first (H200: 2.10-2.21 against 2.24-2.32, five A/A runs; none without PDL), and
    # Atom built after bf16 took 2.31 against 2.11 first
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                    help="each build (path, --act-scales layout, --flag-ab form) in its own Python process, in "
                         "plan order; --no-isolate builds them all in this one")
    ap.add_argument("--plan-index", type=int, default=None, help=argparse.SUPPRESS)  # a child of --isolate
    ap.add_argument("--rows-json", default=None, help=argparse.SUPPRESS)  # where a child writes its rows
    ap.add_argument("--pre-alloc-gb", type=float, default=0.0,
                    help="before the first build, fill and free this many GiB of GPU memory in 64 MiB blocks (as a "
                         "bf16 model built first would): does a later build time differently because of "
                         "where its memory lands?")
    ap.add_argument("--pack-weights", action="store_true",
                    help="every path's weights moved into one allocation after quantization (pack_weights)")
    ap.add_argument("--pdl-report", action="store_true",
                    help="after each atom build, how Inductor launches each compiled kernel that asks for PDL "
                         "(common.pdl_launch_report)")
    ap.add_argument("--graph-dump", action="store_true",
                    help="write each captured decode step's CUDA graph as DOT (results dir, graph_*.dot) and put its "
                         "node and edge counts in the row (programmatic edges: PDL)")
    ap.add_argument("--log-autotune", action="store_true",
                    help="print every config's time when a compiled kernel is autotuned, ours and Inductor's (to compare "
                         "two builds' picks)")
    return ap.parse_args(argv)


def pre_alloc(gib: float) -> None:
    """Fill ``gib`` GiB of GPU memory in 64 MiB blocks, then free it and return it to the driver."""
    blocks = [torch.ones(16 << 20, dtype=torch.float32, device="cuda") for _ in range(int(gib * 16))]
    torch.cuda.synchronize()
    n = len(blocks)
    del blocks
    gc.collect()
    torch.cuda.empty_cache()
    print(f"pre-alloc: {n} blocks of 64 MiB filled and freed", flush=True)


def drop_caches(model) -> None:
    """Let go of the model's KV caches. A function, so that no loop variable outlives it: session
    40-41's builds left their last layer alive through one (0.21 GB reported after an Atom build,
    0.48 GB after bf16, the whole arena with --pack-weights)."""
    for layer in model.layers:
        layer.cache = None


def isolated_argv(argv: list[str], index: int, rows_json: str) -> list[str]:
    """The command line of the child process that runs plan entry ``index`` alone (``--isolate``):
    the parent's own options, then the child's (argparse keeps the last of a repeated option)."""
    return [*argv, "--no-isolate", "--plan-index", str(index), "--rows-json", rows_json]


def run_isolated(argv: list[str], n_builds: int, run=subprocess.run) -> list[dict]:
    """Each build of the plan in its own Python process, one after another; their rows in plan order.
    A child that fails leaves its rows out (its output says why)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_builds):
            rows_json = os.path.join(tmp, f"rows{i}.json")
            done = run([sys.executable, str(Path(__file__).resolve()), *isolated_argv(argv, i, rows_json)])
            if done.returncode != 0:
                print(f"build {i} of the plan: its process exited with {done.returncode}", flush=True)
            if os.path.exists(rows_json):
                with open(rows_json) as f:
                    rows += json.load(f)
    return rows


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = run_plan(args)
    if args.isolate and len(plan) > 1:
        rows = run_isolated(argv, len(plan))
        if not rows:
            raise SystemExit("bench_generate: no build of the plan gave a row")
        _report(rows, args, _write(rows, args), " (each build in its own process)")
        return
    if args.plan_index is not None:
        plan = plan[args.plan_index:args.plan_index + 1]
    if args.log_autotune:
        log_autotune_picks()
    if args.inductor_pdl:
        import torch._inductor.config as inductor_config

        if not hasattr(inductor_config.triton, "enable_pdl"):
            raise SystemExit(f"--inductor-pdl: torch {torch.__version__} has no inductor.config.triton.enable_pdl")
        inductor_config.triton.enable_pdl = True
    if args.pre_alloc_gb > 0:
        pre_alloc(args.pre_alloc_gb)
    shape = replace(SHAPES[args.model], fused_qkv=args.fused_qkv, fused_gate_up=args.fused_gate_up)
    rows = []
    if any(layout != plan[0][1] or flag is not None for _, layout, flag, _ in plan):
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = False  # a graph cached for one form must not serve the other
    flag_mod, flag_names = args.flag_ab.split(":") if args.flag_ab else (None, "")
    flag_names = [name for name in flag_names.split("+") if name]
    for name in flag_names:
        set_module_flag(flag_mod, name, False)  # a bad name stops here, before any build
    for path, layout, flag, label in plan:
        for name in flag_names if flag is not None else ():
            set_module_flag(flag_mod, name, flag)
        set_act_scales(layout)
        if "atom_ao.ops.pdl" in sys.modules:
            sys.modules["atom_ao.ops.pdl"].MARKED.clear()  # this build's kernels only
        try:
            model = build(shape, path, args.layers, not args.no_compile, args.pack_weights, args.compile_scope)
        except Exception as e:
            print(f"{label}: cannot build ({type(e).__name__}: {str(e)[:160]})")
            continue
        weight_gb = torch.cuda.memory_allocated() / 2**30
        s = model.s
        per_seq = kv_bytes_per_token(s, path) * (args.prompt + args.gen) / 2**30
        fit = int(max(0.0, args.budget_gb * 0.9 - weight_gb) // per_seq)
        for b in (int(x) for x in args.batches.split(",")):
            if path == "int8" and b <= 16:  # skipped before its compile: it would only fail after it
                print(f"int8 batch {b}: skipped (torchao's Int8 dynamic path calls torch._int_mm, which needs "
                      "more than 16 rows)")
                continue
            try:
                dump = (str(results_dir() / f"graph_{args.model}_{re.sub(r'[^A-Za-z0-9]+', '_', label)}_b{b}.dot")
                        if args.graph_dump else None)
                r = run_batch(model, path, b, args.prompt, args.gen, args.steps, args.profile, dump)
            except Exception as e:
                print(f"{label} batch {b}: failed ({type(e).__name__}: {str(e)[:800]})")
                torch.cuda.empty_cache()
                continue
            row = {"model": args.model, "layers": s.n_layers, "path": label, "batch": b, **r,
                   "weights_gb": round(weight_gb, 2), f"max_batch_{int(args.budget_gb)}gb": fit}
            prof = row.pop("profile", None)
            rows.append(row)
            print(row, flush=True)
            if prof:
                row["profile_by_kind_us"] = prof["by_kind_us"]  # in the JSON, not the table
                row["timeline_by_kind_us"] = prof["exposed_by_kind_us"]
                for title, kinds, top in (
                        (f"profile {label} batch {b}: {prof['gpu_us_per_step']} us of kernels per step",
                         prof["by_kind_us"], prof["top_kernels_us"]),
                        (f"timeline {label} batch {b}: {prof['timeline_us_per_step']} us a step, {prof['idle_us']} us "
                         "of it no kernel running; each kernel charged the time it added",
                         prof["exposed_by_kind_us"], prof["exposed_top_us"])):
                    print(f"  {title}")
                    for k, us in kinds.items():
                        print(f"    {k:32s} {us:10.1f} us")
                    for k, us in top:
                        print(f"      {us:10.1f} us  {k}")
        passes = sys.modules.get("atom_ao.inductor.passes")
        if passes is not None and path.startswith("atom") and passes.LAST_COUNTS:  # what the pass did to the last graph
            print(f"  {label}: atom_ao's Inductor pass on the last graph compiled: {dict(passes.LAST_COUNTS)}")
        pdl = sys.modules.get("atom_ao.ops.pdl")
        if pdl is not None and pdl.ENABLED and path.startswith("atom"):  # evidence that the compiled kernels got the launch attribute
            print(f"  {label}: atom_ao.ops.pdl marked {len(pdl.MARKED)} compiled kernels for PDL launches "
                  f"({', '.join(sorted(set(pdl.MARKED)))[:300]})")
        if args.pdl_report and path.startswith("atom"):
            print(f"  {label}: Inductor's launchers of the kernels asking for PDL: {pdl_launch_report()}")
        drop_caches(model)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        if args.rows_json:  # a child of --isolate: its rows go to its parent
            with open(args.rows_json, "w") as f:
                json.dump(rows, f)
            continue
        stem = _write(rows, args)  # after every path: a run cut short keeps what it measured
    if not args.rows_json:
        _report(rows, args, stem)


def _report(rows, args, stem, how: str = "") -> None:
    """The table on stdout and the plot beside the result files ``_write`` wrote at ``stem``."""
    print(markdown_table(rows, _columns(args)))
    _plot(rows, stem.with_name(stem.name + ".png"), args.model)
    print(f"wrote {stem}.json/.md/.png{how}")


def _columns(args):
    return ["model", "layers", "path", "batch", "prefill_ms", "tpot_ms", "tokens_per_s", "speedup_vs_bf16",
            "loop_tpot_ms", "loop_speedup_vs_bf16", "peak_gb", "weights_gb", f"max_batch_{int(args.budget_gb)}gb"]


def _write(rows, args):
    for r in rows:
        base = next((x for x in rows if x["path"] == "bf16" and x["batch"] == r["batch"]), None)
        r["speedup_vs_bf16"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2) if base else None
        r["loop_speedup_vs_bf16"] = (round(r["loop_tokens_per_s"] / base["loop_tokens_per_s"], 2)
                                     if base and "loop_tokens_per_s" in r and "loop_tokens_per_s" in base else None)
    return write_results(f"bench_generate_{args.model}{_form_tag(args)}", rows, _columns(args),
                         {"command": " ".join(sys.argv), "prompt": args.prompt, "gen": args.gen,
                          "fused_qkv": args.fused_qkv, "fused_gate_up": args.fused_gate_up,
                          "timed_steps": args.steps, "gpu": gpu_name(),
                          "inductor_passes": os.environ.get("ATOM_AO_INDUCTOR", "1") != "0"})


def _form_tag(args) -> str:
    # result files of the fused default keep the plain name; the unfused forms say so
    return ("" if args.fused_qkv else "_unfused_qkv") + ("" if args.fused_gate_up else "_unfused_gate_up")


def _plot(rows, path, model):
    from plot_generate import plot

    plot(rows, path, f"{model} decode throughput on {gpu_name()}")


if __name__ == "__main__":
    main()

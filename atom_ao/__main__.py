"""``python -m atom_ao``: quantize a real model with Atom and show what it costs and gives.

With no arguments: SmolLM2-135M (installed from the package index), calibration on the
calibration part of the bundled Wikipedia text, Atom W4A4, perplexity FP vs Atom vs Atom with the
INT4 KV cache on the held-out part, greedy samples, tokens/s bf16 vs Atom (vs Atom + INT4 KV)
where a GPU is present (through ``generate`` with atom_ao's loop as its ``custom_generate``;
``--speed-loops atom_ao,generate`` adds transformers' own loop), the quantized checkpoint
(safetensors) and a JSON report in ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch


_T0 = time.perf_counter()


def _step(msg: str) -> None:
    # progress on stderr with the elapsed time: a GPU run spends minutes compiling the decode steps
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def _generate(model, ids, kv4: bool, max_cache_len: int | None = None, cache=None, **kw):
    """HF generate; ``kv4``: through the INT4 KV cache (its attention switched back after).
    ``max_cache_len``: a static cache (float or INT4) of that length, with which transformers
    compiles the decode step on a GPU (CUDA graphs). ``cache``: that cache, made by the caller."""
    from atom_ao.generation import make_cache
    from atom_ao.kv import with_cache

    if not kv4 and max_cache_len is None and cache is None:
        return model.generate(ids, **kw)
    impl = model.config._attn_implementation
    try:
        cache = cache if cache is not None else make_cache(model, kv4, max_cache_len)
        return model.generate(ids, **with_cache(model, cache), **kw)
    finally:
        if kv4:  # the INT4 cache switched the attention to "atom_int4"
            model.set_attn_implementation(impl)


@torch.no_grad()
def _sample(model, tok, prompt: str, new_tokens: int, kv4: bool = False) -> str:
    ids = tok(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    out = _generate(model, ids, kv4, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _atom_loop_tokens_per_s(model, ids: torch.Tensor, kv4: bool = False, short: int = 8, long: int = 136,
                            compile: bool = True) -> float:
    """Decode tokens/s of ``generate(custom_generate=atom_ao.greedy_decoding)`` (atom_ao's loop: one
    captured CUDA graph replay a token on a GPU): the time of ``long`` new tokens less that of
    ``short`` (the prompt and the once-a-call capture cancel), over the ``long - short`` tokens
    between, after a first run that compiles. One cache length for both, so one compiled step."""
    import atom_ao

    torch._dynamo.reset()  # as in _tokens_per_s: each path compiled afresh
    step = atom_ao.greedy_decoding if compile else functools.partial(atom_ao.greedy_decoding, compile=False)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, max_cache_len=ids.shape[1] + long,
              custom_generate=step)  # eos None: every run makes all its tokens

    def seconds(n: int) -> float:
        _sync(ids.device)
        t = time.perf_counter()
        out = _generate(model, ids, kv4, max_new_tokens=n, **kw)
        _sync(ids.device)
        if out.shape[1] != ids.shape[1] + n:
            raise RuntimeError(f"atom_ao: the decode loop stopped after {out.shape[1] - ids.shape[1]} of {n} tokens")
        return time.perf_counter() - t

    seconds(long)  # compiles (and autotunes), captures
    return (long - short) / (min(seconds(long) for _ in range(2)) - min(seconds(short) for _ in range(2)))


@torch.no_grad()
def _tokens_per_s(model, ids: torch.Tensor, pad_token_id: int, new_tokens: int = 64, kv4: bool = False) -> float:
    """Decode tokens/s of HF generate at batch 1 with a static cache (compiled, CUDA graphs), the
    second of two same-length runs (the first compiles and autotunes; prefill is in both)."""
    # each path compiled as a fresh process would: without a reset a step first runs (and fails)
    # the earlier paths' guards, and a recompile of the same frame marks changed sizes dynamic
    torch._dynamo.reset()
    kw = dict(do_sample=False, pad_token_id=pad_token_id, min_new_tokens=new_tokens, max_new_tokens=new_tokens,
              max_cache_len=ids.shape[1] + new_tokens)
    _generate(model, ids, kv4, **kw)
    torch.cuda.synchronize()
    t = time.perf_counter()
    _generate(model, ids, kv4, **kw)
    torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m atom_ao", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, qwen2.5-0.5b, or a local HF folder / .gguf file")
    ap.add_argument("--calib-samples", type=int, default=16, help="calibration windows (paper: 128)")
    ap.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration window (paper: 2048)")
    ap.add_argument("--eval-windows", type=int, default=4, help="held-out windows for perplexity")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per perplexity window")
    ap.add_argument("--n-outliers", type=int, default=128)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--out", default="outputs/atom_ao", help="folder for the checkpoint and report")
    ap.add_argument("--prompt", default="The Eiffel Tower is located in")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--no-speed", action="store_true",
                    help="skip the GPU decode tokens/s (each loop compiles a decode step for each of the three paths: minutes)")
    ap.add_argument("--speed-loops", default="atom_ao",
                    help="which generate loops to time, comma-separated: atom_ao (generate(custom_generate="
                         "atom_ao.greedy_decoding), one CUDA graph replay a token) and / or generate (transformers' own "
                         "loop over its compiled step); each adds three decode compiles (~2-4 min on an H200)")
    args = ap.parse_args(argv)
    loops = [x.strip() for x in args.speed_loops.split(",") if x.strip()]
    if not loops or set(loops) - {"atom_ao", "generate"}:
        ap.error(f"--speed-loops: a comma-separated subset of atom_ao,generate, got {args.speed_loops!r}")
    global _T0
    _T0 = time.perf_counter()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import atom_ao
    from atom_ao import data
    from atom_ao.eval.methods import decoder_linears, kv4_forward
    from atom_ao.eval.perplexity import perplexity

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": args.model, "device": device, "dtype": str(dtype).removeprefix("torch."),
                    "n_outliers": args.n_outliers}
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    speed = device == "cuda" and not args.no_speed

    t = time.perf_counter()
    model, tok = data.load_model(args.model, dtype=dtype, device=device)
    report["load_s"] = round(time.perf_counter() - t, 1)
    eval_ids = data.eval_tokens(tok, "wiki")
    ppl_kw = dict(seq_len=args.seq_len, max_windows=args.eval_windows, device=device)
    report["eval"] = {"text": "wiki held-out part (atom_ao.data.wiki_split)", "seq_len": args.seq_len,
                      "windows": args.eval_windows, "method": "non-overlapping windows"}

    _step(f"[1/7] perplexity of the float model ({args.eval_windows} x {args.seq_len} held-out tokens)")
    report["ppl_fp"] = round(perplexity(model, eval_ids, **ppl_kw), 3)
    _step(f"      float perplexity {report['ppl_fp']}")
    sample_fp = _sample(model, tok, args.prompt, args.new_tokens)
    if speed:
        speed_ids = tok("The history of", return_tensors="pt").input_ids.to(device)  # every loop and path
        loop = {}  # filled path by path
        if "atom_ao" in loops:
            report["tokens_per_s_atom_loop"] = loop

        def time_path(name: str, label: str, kv4: bool = False) -> None:
            """Decode tokens/s of one path through each loop asked for (each compiles its step)."""
            if "generate" in loops:
                _step(f"      {label} decode tokens/s through transformers' generate (compiles the step)")
                report[f"tokens_per_s_{name}"] = round(_tokens_per_s(model, speed_ids, tok.eos_token_id, kv4=kv4), 1)
                _step(f"      {label}: {report[f'tokens_per_s_{name}']} tokens/s")
            if "atom_ao" in loops:
                _step(f"      {label} decode tokens/s through atom_ao's loop (compiles the step)")
                loop[name] = round(_atom_loop_tokens_per_s(model, speed_ids, kv4), 1)
                _step(f"      {label} (custom_generate=atom_ao.greedy_decoding): {loop[name]} tokens/s")

        time_path("bf16", "bf16")

    _step(f"[2/7] calibrating on {args.calib_samples} x {args.calib_seq_len} tokens and quantizing")
    batches = data.calibration_batches(tok, n_samples=args.calib_samples, seq_len=args.calib_seq_len)
    t = time.perf_counter()
    atom_ao.quantize_calibrated(model, batches, atom_ao.atom_config(n_outliers=args.n_outliers),
                                filter_fn=decoder_linears)  # the LM head stays in full precision
    report["quantize_s"] = round(time.perf_counter() - t, 1)

    _step("[3/7] perplexity of the Atom W4A4 model")
    report["ppl_atom"] = round(perplexity(model, eval_ids, **ppl_kw), 3)
    _step(f"      Atom perplexity {report['ppl_atom']}")
    _step("[4/7] perplexity of the Atom W4A4 model with the INT4 KV cache")
    report["ppl_atom_kv4"] = round(perplexity(model, eval_ids, forward=kv4_forward(), **ppl_kw), 3)
    _step(f"      Atom + INT4 KV perplexity {report['ppl_atom_kv4']}")
    _step("[5/7] greedy samples")
    report["prompt"] = args.prompt
    report["sample_fp"] = sample_fp
    report["sample_atom"] = _sample(model, tok, args.prompt, args.new_tokens)
    report["sample_atom_kv4"] = _sample(model, tok, args.prompt, args.new_tokens, kv4=True)
    _step(f"[6/7] writing {out_dir}/model.safetensors and report.json")
    atom_ao.save_quantized(model, str(out_dir / "model.safetensors"))

    def write_report() -> None:  # rewritten after each decode path: a cut-short GPU run keeps what it measured
        report["wall_s"] = round(time.perf_counter() - _T0, 1)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))

    write_report()
    if speed:
        # as the README says to: plain-tensor weights, so the compiled step does not pay ~38 us of
        # guards and unwrapping per AtomQuantTensor per token (same ops, same numbers), and q/k/v
        # and gate/up one GEMM each (the same numbers again: a GEMM's rows are independent)
        atom_ao.unwrap_weights(model)
        fused = atom_ao.fuse_projections(model)
        report["decode_weights"] = f"atom_ao.unwrap_weights (AtomLinear), fuse_projections ({fused} groups)"
        _step("[7/7] Atom decode tokens/s (compiles and autotunes the decode step)")
        time_path("atom", "Atom")
        write_report()
        time_path("atom_kv4", "Atom + INT4 KV", kv4=True)
        write_report()

    print(f"\nmodel {args.model} on {device} ({report['dtype']}); perplexity on {args.eval_windows} x "
          f"{args.seq_len} held-out wiki tokens")
    print(f"  float : {report['ppl_fp']:.3f}")
    print(f"  Atom  : {report['ppl_atom']:.3f}   (W4A4, {args.n_outliers} INT8 outliers, "
          f"calibrated on {args.calib_samples} x {args.calib_seq_len} tokens in {report['quantize_s']} s)")
    print(f"  Atom + INT4 KV cache: {report['ppl_atom_kv4']:.3f}")
    if speed and "generate" in loops:
        print(f"  decode tokens/s (HF generate, static cache compiled by transformers, batch 1): "
              f"bf16 {report['tokens_per_s_bf16']}, "
              f"Atom {report['tokens_per_s_atom']}, Atom + INT4 KV {report['tokens_per_s_atom_kv4']}")
    if speed and "atom_ao" in loops:
        loop = report["tokens_per_s_atom_loop"]
        print(f"  decode tokens/s (HF generate with custom_generate=atom_ao.greedy_decoding, one CUDA graph "
              f"replay a token, batch 1): bf16 {loop['bf16']}, Atom {loop['atom']}, Atom + INT4 KV {loop['atom_kv4']}")
    print(f"  prompt: {args.prompt!r}\n  float : {sample_fp!r}\n  Atom  : {report['sample_atom']!r}\n"
          f"  Atom + INT4 KV: {report['sample_atom_kv4']!r}")
    return report


if __name__ == "__main__":
    main()

"""Greedy decoding of a transformers causal LM without ``generate``'s per-token host work.

    ids = atom_ao.generate(model, input_ids, max_new_tokens=128, kv4=True)

``model.generate`` with a static cache runs its compiled decode step inside a Python loop that
prepares inputs, builds a mask, runs logits processors and stopping criteria, and syncs with the
GPU every token; on the H200 that was ~2.9 ms of CPU a token for Llama-2-7B in bf16 (7.42 ms a
token against a 4.57 ms GPU step; session 20), more than Atom's whole decode step (~2.9 ms in
``benchmarks/bench_generate.py``). Here, as in gpt-fast: the prompt runs once (eager), then one
compiled step takes the last token and its position and returns the next (argmax on the GPU); on
a GPU that step is recorded once in a CUDA graph and replayed (``capture``), and the host only
looks at the tokens every ``eos_check_every`` steps to stop at ``eos_token_id``. Same model,
same cache classes, same tokens as ``model.generate(do_sample=False)`` with that cache.

Scope: greedy, a batch of prompts of one length (no padding), Llama-style models whose forward
takes ``position_ids`` and a cache (``StaticCache``, or ``AtomKVCache`` with ``kv4=True``).
"""

from __future__ import annotations

import torch

__all__ = ["generate", "greedy_decoding"]


def _check(model, input_ids: torch.Tensor, max_new_tokens: int) -> None:
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"atom_ao.generate: input_ids must be (batch, tokens) integers, got "
                         f"{tuple(input_ids.shape)} {input_ids.dtype}")
    if input_ids.shape[1] == 0:
        raise ValueError("atom_ao.generate: empty prompt")
    if max_new_tokens < 1:
        raise ValueError(f"atom_ao.generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    if input_ids.device != device:
        raise ValueError(f"atom_ao.generate: input_ids on {input_ids.device}, model on {device}")


def _check_cache(cache, need: int, compile: bool, who: str) -> None:
    """A cache the loop can fill: static or INT4, empty, ``need`` tokens long, static when compiled."""
    from transformers import StaticCache

    from atom_ao.kv import AtomKVCache

    if cache.get_seq_length() != 0:
        raise ValueError(f"{who}: the cache already holds tokens; pass an empty one")
    if not isinstance(cache, (StaticCache, AtomKVCache)):
        raise ValueError(f"{who}: the cache must be an AtomKVCache or a StaticCache, got {type(cache).__name__}")
    limit = cache.get_max_length()  # -1: a cache that grows (AtomKVCache without max_cache_len)
    if limit == -1 and compile:
        raise ValueError(f"{who}: a compiled step needs a static cache: AtomKVCache(model, max_cache_len=...)")
    if limit != -1 and limit < need:
        raise ValueError(f"{who}: the cache holds {limit} tokens, the prompt and new tokens {need}")


def make_cache(model, kv4: bool, max_cache_len: int | None):
    """``AtomKVCache`` (kv4; max_cache_len None: a growing cache) or transformers' ``StaticCache``."""
    if kv4:
        from atom_ao.kv import AtomKVCache

        return AtomKVCache(model, max_cache_len=max_cache_len)  # switches attention to "atom_int4"
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_cache_len)


def _greedy(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The next token of each sequence, (B, 1), from the last position's logits."""
    return logits[:, -1].argmax(-1, keepdim=True).to(dtype)


def _step(model, tok, pos, cache, key: str):
    return _greedy(model(tok, position_ids=pos, use_cache=True, **{key: cache}).logits, tok.dtype)


_COMPILED: dict = {}


def _compiled_step(mode):
    # one compiled function for every call: the model and the cache are its arguments (guarded
    # by identity and by type), so a second generate with a fresh cache reuses the compiled step
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_step, mode=mode, fullgraph=True)
    return _COMPILED[mode]


def _capture(step) -> torch.cuda.CUDAGraph:
    """``step()`` recorded as a CUDA graph: nothing runs until ``replay()``, and a replay is the
    whole step with no host work (no guards, no Dynamo frame, no CUDA-graph-tree bookkeeping)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # on a side stream of its own, memory from the graph's pool
        step()
    return graph


def _use_capture(capture: bool | None, device: torch.device, compile: bool) -> bool:
    """capture=None: on for a compiled CUDA step. H200, Llama-2-7B, batch 1, Atom + INT4 KV: 3.53 ms
    a token captured against bf16's 4.90 (session 23, 192 tokens timed); under Inductor's CUDA graphs
    7.38-12.31 with a guard skip since removed (session 22, 32 tokens; without it not yet timed at
    32 layers)."""
    if capture is None:
        return device.type == "cuda" and compile
    if capture and (device.type != "cuda" or not compile):
        raise ValueError(f"atom_ao.generate: capture=True records a CUDA graph of the compiled step: it needs a "
                         f"CUDA model and compile=True (got {device}, compile={compile})")
    return capture


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, kv4: bool = False,
             max_cache_len: int | None = None, cache=None, eos_token_id: int | list[int] | None = None,
             compile: bool = True, eos_check_every: int = 16, capture: bool | None = None) -> torch.Tensor:
    """Greedy tokens of ``model`` after ``input_ids``: (batch, prompt + new) like ``generate``.

    kv4: the INT4 KV cache (``AtomKVCache``; the model's attention is switched back after), else
    transformers' ``StaticCache``. max_cache_len: the cache's length (default prompt + new).
    cache: an empty cache of one's own instead (``AtomKVCache(model, max_cache_len=..., ...)`` with
    other options, or a ``StaticCache``; long enough, static when compiled; its attention switch
    stays the caller's), with kv4 / max_cache_len left unset.
    eos_token_id (one id or a list): stop once every sequence has produced one (checked every
    ``eos_check_every`` steps; tokens after a sequence's first EOS are not masked). compile: compile the decode step
    (Inductor; on a CPU no CUDA graphs).
    capture (CUDA, with compile; the default there): compile the step without Inductor's CUDA
    graphs, run two steps, then record one step in a CUDA graph of its own and replay it for the
    rest (as ``benchmarks/bench_generate.py`` does): the host then does one ``replay()`` a token.
    capture=False: the compiled step with ``mode="reduce-overhead"`` every token.
    """
    _check(model, input_ids, max_new_tokens)
    b, t = input_ids.shape
    total = t + max_new_tokens
    capture = _use_capture(capture, input_ids.device, compile)
    eos = None if eos_token_id is None else torch.tensor(eos_token_id, device=input_ids.device).reshape(-1)
    if cache is not None:
        if kv4 or max_cache_len is not None:
            raise ValueError("atom_ao.generate: pass a cache, or kv4 / max_cache_len to have one made, not both")
        _check_cache(cache, total, compile, "atom_ao.generate")
        return _decode(model, input_ids, cache, max_new_tokens, eos, compile, capture, eos_check_every)
    max_cache_len = max_cache_len or total
    if max_cache_len < total:
        raise ValueError(f"atom_ao.generate: max_cache_len {max_cache_len} < prompt + new tokens {total}")
    impl = model.config._attn_implementation
    cache = make_cache(model, kv4, max_cache_len)
    try:
        return _decode(model, input_ids, cache, max_new_tokens, eos, compile, capture, eos_check_every)
    finally:
        if kv4:
            model.set_attn_implementation(impl)


def _decode(model, input_ids, cache, max_new_tokens: int, eos: torch.Tensor | None, compile: bool, capture: bool,
            eos_check_every: int) -> torch.Tensor:
    """The prompt, then greedy steps into ``cache`` (empty, static, long enough), stopping early
    once every sequence has produced one of ``eos`` (checked every ``eos_check_every`` steps)."""
    from atom_ao.kv import with_cache

    if eos_check_every < 1:
        raise ValueError(f"atom_ao: eos_check_every must be >= 1, got {eos_check_every}")
    b, t = input_ids.shape
    total = t + max_new_tokens
    cache_kw = with_cache(model, cache)
    device = input_ids.device
    out = torch.empty(b, total, dtype=input_ids.dtype, device=device)
    out[:, :t] = input_ids

    pos = torch.arange(t, device=device).expand(b, t)
    logits = model(input_ids, position_ids=pos, use_cache=True, logits_to_keep=1, **cache_kw).logits
    tok = _greedy(logits, input_ids.dtype)  # (B, 1), contiguous: the step's input
    out[:, t:t + 1] = tok
    cuda_graphs = device.type == "cuda" and not capture  # capture: our own graph, not Inductor's
    decode = _compiled_step("reduce-overhead" if cuda_graphs else None) if compile else _step
    (key,) = cache_kw
    pos = torch.full((b, 1), t, dtype=torch.int64, device=device)
    n = t + 1

    def step():  # the next token into tok and out (at pos + 1), pos + 1: all on the device
        nxt = decode(model, tok, pos, cache, key)
        tok.copy_(nxt)  # the same input tensor every step; the CUDA graph reuses its output buffer
        out.scatter_(1, pos + 1, nxt)
        pos.add_(1)

    graph = None
    while n < total:
        if capture and (graph is not None or n >= t + 3):  # two steps first: compile, autotune
            graph = graph or _capture(step)
            graph.replay()
        else:
            # Dynamo checks its guards every call. Skipping them after the second step
            # (skip_guard_eval_unsafe, session 21) made the step slower under Inductor's CUDA
            # graphs (H200, 8 Llama-2-7B layers, Atom + INT4 KV: 0.846 -> 1.432 ms): removed
            step()
        n += 1
        if eos is not None and (n - t) % eos_check_every == 0:
            if bool(torch.isin(out[:, t:n], eos).any(dim=1).all()):
                break
    return out[:, :n]


@torch.no_grad()
def greedy_decoding(model, input_ids: torch.Tensor, logits_processor=None, stopping_criteria=None,
                    generation_config=None, synced_gpus: bool = False, streamer=None, *, compile: bool = True,
                    capture: bool | None = None, eos_check_every: int = 16, **model_kwargs) -> torch.Tensor:
    """transformers' decoding-loop hook: ``model.generate(ids, custom_generate=atom_ao.greedy_decoding,
    max_new_tokens=n, past_key_values=AtomKVCache(model, max_cache_len=...))`` runs ``generate``'s
    own input preparation, then this loop (``atom_ao.generate``'s: one compiled step, on a GPU one
    CUDA graph replay a token) instead of its per-token Python loop. The same tokens as greedy
    ``generate``: sequences that finished are padded with ``pad_token_id`` after their EOS, and the
    output ends where the last one finished. The cache: an ``AtomKVCache`` or ``StaticCache`` passed
    in (static, long enough; the INT4 cache's attention switch stays the caller's), else a
    ``StaticCache`` of prompt + new tokens. Greedy only: sampling, beams, logits processors
    (repetition penalty, min length, ...), stopping criteria other than the length and EOS (stop
    strings, max_time), streamers, padded prompts and dict outputs raise.
    ``functools.partial`` sets compile / capture / eos_check_every (as in ``atom_ao.generate``)."""
    from transformers import StaticCache

    from atom_ao.kv import AtomKVCache

    cfg = generation_config
    refused = [what for what, bad in (
        ("do_sample=True", cfg.do_sample), ("num_beams > 1", (cfg.num_beams or 1) > 1),
        ("return_dict_in_generate=True", cfg.return_dict_in_generate), ("a streamer", streamer is not None),
        ("synced_gpus=True", synced_gpus),
        ("logits processors " + ", ".join(type(p).__name__ for p in logits_processor or ()), bool(logits_processor)),
    ) if bad]
    others = [type(c).__name__ for c in stopping_criteria or ()
              if type(c).__name__ not in ("MaxLengthCriteria", "EosTokenCriteria")]  # those two it follows
    if others:
        refused.append("stopping criteria " + ", ".join(others))
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool(mask.all()):
        refused.append("a padded prompt (attention_mask with zeros)")
    if refused:
        raise ValueError(f"atom_ao.greedy_decoding: greedy decoding only; got {'; '.join(refused)}")
    _check(model, input_ids, 1)
    t = input_ids.shape[1]
    new = cfg.max_length - t
    if new < 1:
        raise ValueError(f"atom_ao.greedy_decoding: max_length {cfg.max_length} leaves no new token after a "
                         f"prompt of {t}")
    cache = model_kwargs.get("past_key_values", model_kwargs.get("cache"))
    if cache is None or (not isinstance(cache, (StaticCache, AtomKVCache)) and cache.get_seq_length() == 0):
        cache = StaticCache(config=model.config, max_cache_len=t + new)  # generate's default DynamicCache: replaced
    _check_cache(cache, t + new, compile, "atom_ao.greedy_decoding")
    eos = cfg._eos_token_tensor
    if eos is not None:
        eos = eos.reshape(-1).to(input_ids.device)
    capture = _use_capture(capture, input_ids.device, compile)
    out = _decode(model, input_ids, cache, new, eos, compile, capture, eos_check_every)
    if eos is None:
        return out
    return _pad_after_eos(out, t, eos, cfg._pad_token_tensor)


def _pad_after_eos(out: torch.Tensor, t: int, eos: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    """``generate``'s finished sequences: the tokens after a sequence's first EOS become ``pad``,
    and the output stops at the step where the last sequence produced its EOS."""
    hit = torch.isin(out[:, t:], eos)
    done = hit.cumsum(1) - hit.long() > 0  # strictly after the first EOS
    if pad is not None:
        out = out.clone()
        out[:, t:][done] = pad.to(out.dtype)
    if bool(hit.any(dim=1).all()):  # every sequence finished: the step of the last first EOS
        return out[:, :t + int(hit.int().argmax(dim=1).max()) + 1]
    return out

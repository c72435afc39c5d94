"""The generation benchmark's model (benchmarks/gpt.py): the INT4 KV cache path against the
bf16 cache, eager and with the compiled shared block, on CPU (reference ops) at a tiny shape."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from gpt import Int4KVCache, Llama, LlamaShape  # noqa: E402

from tests.conftest import sqnr  # noqa: E402

SHAPE = LlamaShape(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, intermediate=256, vocab=97)


def _decode(model, batch, prompt, steps, int4: bool, before_rope: bool = False, hadamard: bool = False):
    s = model.s
    max_len = prompt + steps
    base = s.rope_base if before_rope else None
    make = (lambda layer: Int4KVCache(batch, s.n_kv_heads, max_len, s.head_dim, torch.float32, "cpu", base,
                                      hadamard)) if int4 else None
    model.setup_caches(batch, max_len, make)
    torch.manual_seed(1)
    ids = torch.randint(0, s.vocab, (batch, prompt))
    logits = [model(ids, torch.arange(prompt))]
    nxt = torch.randint(0, s.vocab, (steps, batch, 1))  # teacher-forced: both caches see the same tokens
    for i in range(steps):
        logits.append(model(nxt[i], torch.tensor([prompt + i])))
    return torch.stack(logits)


@torch.no_grad()
@pytest.mark.parametrize("compiled", [False, True])
def test_int4_cache_tracks_bf16_cache(compiled):
    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    model.compile_blocks = compiled
    ref = _decode(model, 2, 8, 4, int4=False)
    got = _decode(model, 2, 8, 4, int4=True)
    # the prompt runs on the float K/V it produced: same logits; decode reads INT4 K/V
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert sqnr(ref[1:], got[1:]) > 15.0
    assert not torch.equal(got[1:], ref[1:])  # the cache really is quantized


@torch.no_grad()
def test_int4_cache_with_keys_before_rope_tracks_bf16_cache():
    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    ref = _decode(model, 2, 8, 4, int4=False)
    got = _decode(model, 2, 8, 4, int4=True, before_rope=True)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert sqnr(ref[1:], got[1:]) > 15.0
    assert not torch.equal(got[1:], ref[1:])


@torch.no_grad()
def test_int4_cache_with_hadamard_rotation_tracks_bf16_cache():
    # bench_generate's atom-kv4-hadamard: K and V stored rotated, queries rotated, the output turned back
    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    ref = _decode(model, 2, 8, 4, int4=False)
    plain = _decode(model, 2, 8, 4, int4=True)
    got = _decode(model, 2, 8, 4, int4=True, hadamard=True)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    assert sqnr(ref[1:], got[1:]) > 15.0
    assert not torch.equal(got[1:], plain[1:])  # another cache content than the plain INT4 one


@torch.no_grad()
@pytest.mark.parametrize("int4", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_qkv_computes_what_the_three_linears_do(int4, compiled):
    # --fused-qkv (gpt-fast's wqkv): the same weights stacked into one linear give the same logits
    from dataclasses import replace

    torch._dynamo.reset()  # fused and unfused blocks, prompt and decode shapes: a fresh recompile budget
    Llama.reset_compiled()
    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    fused = Llama(replace(SHAPE, fused_qkv=True)).eval()
    state = model.state_dict()
    for i in range(SHAPE.n_layers):
        p = f"layers.{i}."
        state[p + "wqkv.weight"] = torch.cat([state.pop(p + n + ".weight") for n in ("wq", "wk", "wv")])
    fused.load_state_dict(state)
    model.compile_blocks = fused.compile_blocks = compiled
    ref = _decode(model, 2, 8, 3, int4=int4)
    got = _decode(fused, 2, 8, 3, int4=int4)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def _stacked_gate_up(state, n_layers):
    for i in range(n_layers):
        p = f"layers.{i}."
        state[p + "w13.weight"] = torch.cat([state.pop(p + n + ".weight") for n in ("w1", "w3")])
    return state


@torch.no_grad()
def test_fused_gate_up_computes_what_the_two_linears_do():
    # --fused-gate-up (vLLM's gate_up_proj): w1 and w3 stacked into one linear, halves into silu * up
    from dataclasses import replace

    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    fused = Llama(replace(SHAPE, fused_gate_up=True)).eval()
    fused.load_state_dict(_stacked_gate_up(model.state_dict(), SHAPE.n_layers))
    torch.testing.assert_close(_decode(fused, 2, 8, 3, int4=True), _decode(model, 2, 8, 3, int4=True),
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_fused_gate_up_quantized_with_atom_keeps_the_silu_mul_quantizer():
    # Atom on w13: its rows are quantized as w1's and w3's were (the data-free outliers come from the
    # stacked weights either way), and the compiled block still fuses silu * up into down_proj's
    # quantizer, which reads the two halves of w13's output as strided columns
    from dataclasses import replace

    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import quantize_

    import atom_ao

    shape = LlamaShape(dim=256, n_layers=1, n_heads=4, n_kv_heads=2, intermediate=512, vocab=97)
    torch.manual_seed(0)
    model = Llama(shape).eval().to(torch.bfloat16)
    fused = Llama(replace(shape, fused_gate_up=True)).eval().to(torch.bfloat16)
    fused.load_state_dict(_stacked_gate_up(model.state_dict(), shape.n_layers))
    not_head = lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head"  # noqa: E731
    for m in (model, fused):
        quantize_(m, atom_ao.atom_config(), filter_fn=not_head)
    torch._dynamo.reset()
    Llama.reset_compiled()
    model.compile_blocks = fused.compile_blocks = True
    ref = _decode(model, 1, 4, 1, int4=False)
    torch._dynamo.reset()
    Llama.reset_compiled()
    got, codes = run_and_get_code(_decode, fused, 1, 4, 1, False)
    code = "\n".join(codes)
    assert code.count("torch.ops.atom_ao.silu_mul_quantize.default(") >= 1, "silu * up not fused into the quantizer"
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch._dynamo.reset()
    Llama.reset_compiled()


@torch.no_grad()
def test_cache_step_inputs_made_once_a_step(monkeypatch):
    # the INT4 cache's write slots and decode lengths come from the model's forward, once a step:
    # made inside the shared compiled block they cost small kernels in every layer
    calls = []
    real = Int4KVCache.step_inputs
    monkeypatch.setattr(Int4KVCache, "step_inputs", lambda self, pos, b: calls.append(pos.shape[0]) or real(self, pos, b))
    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    _decode(model, 3, 8, 4, int4=True)
    assert calls == [8, 1, 1, 1, 1]  # the prompt, then 4 decode steps; 2 layers each
    cache = model.layers[0].cache
    slots, seq_lens = real(cache, torch.tensor([9]), 3)
    assert slots.tolist() == [9, 9 + cache.pages_per_seq * cache.PAGE, 9 + 2 * cache.pages_per_seq * cache.PAGE]
    assert seq_lens.dtype == torch.int32 and seq_lens.tolist() == [10, 10, 10]
    assert real(cache, torch.arange(4), 3)[1] is None  # a prompt has no decode lengths


@torch.no_grad()
def test_step_scope_compiles_all_layers_as_one_graph():
    # compile_scope "step": one graph holds every layer (gpt-fast's whole step), so Inductor may fuse
    # across layers; the logits stay those of the shared compiled block
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = Llama(SHAPE).eval()
    model.compile_blocks = True
    torch._dynamo.reset()
    Llama.reset_compiled()
    ref, block_codes = run_and_get_code(_decode, model, 1, 4, 2, True)
    torch._dynamo.reset()
    Llama.reset_compiled()
    model.compile_scope = "step"
    got, step_codes = run_and_get_code(_decode, model, 1, 4, 2, True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert set(Llama._COMPILED) == {"step"}  # the block scope's function was not compiled
    # the decode graph (the last compiled) calls each layer's linears: n_layers times the block's
    mms = lambda code: code.count("extern_kernels.mm(")  # noqa: E731
    assert mms(block_codes[-1]) > 0 and mms(step_codes[-1]) == SHAPE.n_layers * mms(block_codes[-1])
    model.compile_scope = "layer"
    with pytest.raises(ValueError, match="compile_scope"):
        model(torch.zeros(1, 1, dtype=torch.long), torch.tensor([5]))
    torch._dynamo.reset()
    Llama.reset_compiled()

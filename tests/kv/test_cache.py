"""``AtomKVCache`` in transformers: every path of the attention function against a reference.

CPU: the ops' plain-PyTorch references. GPU (``-m gpu``): the Triton kernels, bf16.
"""

import pytest
import torch
from transformers import DynamicCache

from atom_ao.kv import AtomKVCache, with_cache
from kv_testing import tiny_llama

MODELS = [dict(heads=4, kv_heads=2, head_dim=64), dict(heads=2, kv_heads=2, head_dim=128)]  # GQA, MHA


def _ids(b, t, seed=0):
    return torch.randint(0, 512, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _stepwise_logits(model, ids, n_prompt, cache, chunk=1):
    """Logits of ids[:, n_prompt:] fed after a prompt of n_prompt tokens, ``chunk`` at a time."""
    out = [model(ids[:, :n_prompt], **with_cache(model, cache), use_cache=True).logits]
    for s in range(n_prompt, ids.shape[1], chunk):
        out.append(model(ids[:, s:s + chunk], **with_cache(model, cache), use_cache=True).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("shape", MODELS)
@pytest.mark.parametrize("max_cache_len, rotate", [(None, True), (64, False)])
def test_decode_and_chunks_match_one_int4_forward(shape, max_cache_len, rotate):
    """Decode steps (one token) and chunks (several, after others) read the same INT4 cache a
    one-shot forward with prefill="int4" reads. Not bit-identical: a later layer's K / V come out
    of matmuls over other shapes, and a scale or zero point can round to the next fp16 value
    (transformers 5.24, MHA without rotation: one in layer 1, logits 3.6e-4 apart; session 37's
    CPU machine, MHA with rotation: 3.9e-3 apart, at the session's start commit too); the INT4
    cache itself moves them by ~0.5 against the float cache, so 1e-2 still catches a wrong read."""
    model = tiny_llama(**shape)
    ids = _ids(2, 20)
    kw = dict(max_cache_len=max_cache_len, rotate=rotate, prefill="int4", page_size=8)
    with torch.no_grad():
        full = model(ids, **with_cache(model, AtomKVCache(model, **kw)), use_cache=True).logits
    torch.testing.assert_close(_stepwise_logits(model, ids, 6, AtomKVCache(model, **kw)), full, atol=1e-2, rtol=1e-4)
    torch.testing.assert_close(_stepwise_logits(model, ids, 6, AtomKVCache(model, **kw), chunk=5), full,
                               atol=1e-2, rtol=1e-4)


def test_int4_forward_is_fake_quantized_attention():
    """The cache holds exactly what ``atom_ao.kv.format`` specifies (K after RoPE, V)."""
    model = tiny_llama()
    ids = _ids(1, 24)
    with torch.no_grad():
        got = model(ids, **with_cache(model, AtomKVCache(model, prefill="int4", rotate=False)), use_cache=True).logits
        model.set_attn_implementation("kv_test_fake_quant")
        want = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_float_prefill_is_the_float_model():
    model = tiny_llama()
    ids = _ids(2, 12)
    with torch.no_grad():
        want = model(ids, use_cache=False).logits  # sdpa
        got = model(ids, **with_cache(model, AtomKVCache(model)), use_cache=True).logits
    assert model.config._attn_implementation == "atom_int4"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_generate_close_to_float_cache_and_modes_agree():
    model = tiny_llama(layers=2)
    ids = _ids(1, 16, seed=3)
    gen = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        ref = model.generate(ids, **with_cache(model, DynamicCache(config=model.config)), **gen)
        dyn = model.generate(ids, **with_cache(model, AtomKVCache(model)), **gen)
        static = model.generate(ids, **with_cache(model, AtomKVCache(model, max_cache_len=64)), **gen)
    assert torch.equal(dyn.sequences, static.sequences)
    torch.testing.assert_close(torch.stack(dyn.logits), torch.stack(static.logits), atol=1e-4, rtol=1e-4)
    # the float cache's first token (same prefill) and a close first decode step
    assert dyn.sequences[0, 16] == ref.sequences[0, 16]
    a, b = dyn.logits[1].float(), ref.logits[1].float()
    assert ((a - b).norm() / b.norm()) < 0.2


def test_left_padded_batch_matches_each_sequence_alone():
    model = tiny_llama()
    long, short = _ids(1, 14, seed=1), _ids(1, 9, seed=2)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    gen = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        both = model.generate(ids, attention_mask=mask, **with_cache(model, AtomKVCache(model)), **gen)
        for row, alone in ((0, long), (1, short)):
            one = model.generate(alone, **with_cache(model, AtomKVCache(model)), **gen)
            assert torch.equal(both.sequences[row, 14:], one.sequences[0, alone.shape[1]:])
            torch.testing.assert_close(torch.stack(both.logits)[:, row], torch.stack(one.logits)[:, 0],
                                       atol=1e-3, rtol=1e-3)


def test_cache_bookkeeping():
    model = tiny_llama()
    cache = AtomKVCache(model, page_size=4)
    with torch.no_grad():
        model(_ids(2, 10), **with_cache(model, cache), use_cache=True)  # grows past its first pages
        assert cache.get_seq_length() == 10 and cache.layers[0].pages_per_seq >= 3
        model(_ids(2, 1), **with_cache(model, cache), use_cache=True)
        assert cache.get_seq_length() == 11 and cache.layers[0].seq_lens.tolist() == [11, 11]
        cache.crop(-3)
        assert cache.get_seq_length() == 8
        cache.batch_select_indices(torch.tensor([1]))
        assert cache.layers[0].seq_lens.tolist() == [8] and cache.layers[0].block_table.shape[0] == 1
        cache.reset()
        assert cache.get_seq_length() == 0
        out = model.generate(_ids(1, 6), max_new_tokens=4, num_beams=2, do_sample=False,
                             **with_cache(model, AtomKVCache(model)))  # beam search reorders the cache
    assert out.shape == (1, 10)


def test_plain_attention_without_atom_cache():
    """With "atom_int4" set but another cache (or none), attention is ordinary float attention."""
    model = tiny_llama()
    ids = _ids(2, 10)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        model.set_attn_implementation("atom_int4")
        got = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, want)


# ---------------------------------------------------------------- the kernels in the model (GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", MODELS + [dict(heads=8, kv_heads=1, head_dim=128)])
def test_gpu_kernels_match_cpu_reference_in_the_model(shape):
    """The kernels are as accurate as the references run in the same precision.

    bf16 alone moves logits by ~7% against float32 with an INT4 prompt cache (a bf16 rounding of
    K or V that crosses an INT4 rounding boundary flips a code: 1/15 of the range), so the bound
    is relative to the bf16 reference's own error, measured in the same test.
    """
    cpu = tiny_llama(**shape)
    cpu16 = tiny_llama(**shape, dtype=torch.bfloat16)
    gpu = tiny_llama(**shape, dtype=torch.bfloat16, device="cuda")
    ids = _ids(2, 40)
    err = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    for kw in (dict(prefill="int4"), dict(prefill="float"), dict(prefill="int4", k_before_rope=True)):
        with torch.no_grad():
            want = _stepwise_logits(cpu, ids, 30, AtomKVCache(cpu, **kw))
            ref16 = _stepwise_logits(cpu16, ids, 30, AtomKVCache(cpu16, **kw)).float()
            got = _stepwise_logits(gpu, ids.cuda(), 30, AtomKVCache(gpu, **kw)).float().cpu()
        assert err(got, want) < 1.25 * err(ref16, want) + 5e-3, (kw, err(got, want), err(ref16, want))


@pytest.mark.gpu
def test_gpu_generate_eager_and_compiled():
    model = tiny_llama(heads=8, kv_heads=2, head_dim=128, dtype=torch.bfloat16, device="cuda")
    ids = _ids(2, 30).cuda()
    gen = dict(max_new_tokens=16, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        eager = model.generate(ids, **with_cache(model, AtomKVCache(model)), **gen)
        # a static cache: transformers compiles the decode step on CUDA by itself
        compiled = model.generate(ids, **with_cache(model, AtomKVCache(model, max_cache_len=64)), **gen)
    assert compiled.sequences.shape == eager.sequences.shape
    a, b = torch.stack(compiled.logits)[:4].float(), torch.stack(eager.logits)[:4].float()
    if torch.equal(compiled.sequences[:, :34], eager.sequences[:, :34]):
        assert ((a - b).norm() / b.norm()) < 3e-2


def _tiny_qwen2(big_bias: float, seed=0):
    """A random Qwen2 (k_proj with bias) whose K bias is large on the slow RoPE pairs, as
    Qwen2.5's is (offsets of 100-200 against keys of ~1-5)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2, vocab_size=512, rope_theta=1e6, head_dim=64)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            b = layer.self_attn.k_proj.bias.view(2, 64)
            b.normal_(0, 0.5)
            b[:, [29, 30, 62]] = big_bias * torch.tensor([1.0, -0.7, 0.9])
    return model


def test_key_shift_from_bias_takes_the_still_pairs_only():
    from atom_ao.kv.cache import key_shift_from_bias

    model = _tiny_qwen2(100.0)
    shifts = key_shift_from_bias(model, horizon=2048)
    inv_freq = model.model.rotary_emb.inv_freq
    still = (inv_freq.double() * 2048 <= 1.0).repeat(2)
    assert 0 < int(still.sum()) < 64
    for layer, c in zip(model.model.layers, shifts):
        b = layer.self_attn.k_proj.bias.detach().view(2, 64)
        assert torch.equal(c[:, still], b[:, still]) and not c[:, ~still].any()
    assert key_shift_from_bias(tiny_llama()) is None  # no k_proj bias: no shift


@pytest.mark.parametrize("rotate", [True, False])
def test_key_shift_leaves_softmax_alone_and_shrinks_its_error(rotate):
    """Keys ~N(0, 1) with offsets of ~150 on three channels (Qwen2.5's K bias): the cache with
    the offsets as k_shift stores k - c; q.(k - c) moves a query's scores by q.c, so the softmax
    of the dequantized keys must match the true one far better than without the shift."""
    from atom_ao.kv.cache import AtomKVLayer
    from atom_ao.kv.format import gather_kv

    g = torch.Generator().manual_seed(0)
    h, t, d = 2, 40, 64
    c = torch.zeros(h, d)
    c[:, [29, 30, 62]] = torch.tensor([150.0, -105.0, 135.0])
    k = torch.randn(1, h, t, d, generator=g) + c[None, :, None]
    v = torch.randn(1, h, t, d, generator=g)
    q = torch.randn(1, h, 1, d, generator=g) * 0.25  # scores of std ~2
    true = torch.softmax(q @ k.transpose(-1, -2), -1)
    err = {}
    for name, shift in (("shift", c), ("none", None)):
        layer = AtomKVLayer(prefill="int4", rotate=rotate, k_shift=shift)
        layer.update(k, v)
        kd = gather_kv(layer.k_cache, layer.k_meta, layer.block_table)[:, :, :t]
        if rotate:
            kd = kd @ layer.hadamard_signs.T.float() / d ** 0.5  # the cache holds (k - c) @ H
        err[name] = float((torch.softmax(q @ kd.transpose(-1, -2), -1) - true).abs().max())
    assert err["shift"] < 0.1 and err["shift"] < 0.25 * err["none"], err


def test_k_shift_errors():
    model = _tiny_qwen2(1.0)
    with pytest.raises(ValueError, match="k_shift tensors for"):
        AtomKVCache(model, k_shift=[torch.zeros(2, 64)])
    with pytest.raises(ValueError, match="k_shift must be"):
        AtomKVCache(model, k_shift="mean")
    cache = AtomKVCache(model, k_shift=[torch.zeros(3, 64)] * 2)
    with pytest.raises(ValueError, match="k_shift has shape"):
        model(_ids(1, 4), **with_cache(model, cache), use_cache=True)


# ---------------------------------------------------------------- keys cached before RoPE


def _pre_rope_fake_quant(model, rotate_v):
    """The spec of ``k_before_rope=True`` with an INT4 prefill: each key un-rotated by its slot,
    minus the K bias, quantized, plus the bias, rotated back; V plain (default) or rotated."""
    from atom_ao.kv.attention import _plain_attention
    from atom_ao.kv.format import hadamard
    from atom_ao.kv.rope import rope_table, rotate_keys, unrotate_keys
    from kv_testing import fake_quant

    table = rope_table(model.model.rotary_emb.inv_freq.float(), 256)

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        slots = torch.arange(key.shape[2])
        bias = module.k_proj.bias.view(key.shape[1], 1, -1) if module.k_proj.bias is not None else 0.0
        k = rotate_keys(fake_quant(unrotate_keys(key, table, slots) - bias) + bias, table, slots)
        h = hadamard(value.shape[-1])
        v = fake_quant(value @ h) @ h if rotate_v else fake_quant(value)
        return _plain_attention(query, k, v, None, scaling).transpose(1, 2), None

    return attention


@pytest.mark.parametrize("big_bias, rotate", [(0.0, None), (150.0, None), (150.0, True)])
def test_k_before_rope_forward_is_its_spec(big_bias, rotate):
    from transformers import AttentionInterface

    model = _tiny_qwen2(big_bias)
    ids = _ids(1, 24)
    AttentionInterface.register("kv_test_pre_rope", _pre_rope_fake_quant(model, rotate_v=bool(rotate)))
    with torch.no_grad():
        got = model(ids, **with_cache(model, AtomKVCache(model, prefill="int4", k_before_rope=True, rotate=rotate)),
                    use_cache=True).logits
        model.set_attn_implementation("kv_test_pre_rope")
        want = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_k_before_rope_beats_the_key_shift_on_turning_bias():
    """Keys ~N(0, 1) before RoPE plus a K bias of 54 / -33 on the fastest-turning RoPE pair
    (Qwen2.5's layer 0): the key shift cannot remove a bias that turns with the position;
    caching keys before RoPE takes it out exactly. Softmax error of the dequantized keys."""
    from atom_ao.kv.cache import AtomKVLayer, key_shift_from_bias
    from atom_ao.kv.format import gather_kv
    from atom_ao.kv.rope import rope_table, rotate_keys

    model = _tiny_qwen2(0.0)
    inv_freq = model.model.rotary_emb.inv_freq.float()
    g = torch.Generator().manual_seed(0)
    h, t, d = 2, 40, 64
    bias = torch.zeros(h, d)
    bias[:, [0, 32]] = torch.tensor([54.0, -33.0])  # pair 0 turns 1 rad a position
    table = rope_table(inv_freq, t)
    k = rotate_keys(torch.randn(1, h, t, d, generator=g) + bias[None, :, None], table, torch.arange(t))
    v = torch.randn(1, h, t, d, generator=g)
    q = torch.randn(1, h, 1, d, generator=g) * 0.25
    true = torch.softmax(q @ k.transpose(-1, -2), -1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.bias.copy_(bias.flatten())
    shift = key_shift_from_bias(model)[0]  # what the default cache would subtract: nothing on pair 0
    err = {}
    for name, kw in (("shift", dict(k_shift=shift)), ("pre_rope", dict(rope_inv_freq=inv_freq, k_bias=bias))):
        layer = AtomKVLayer(prefill="int4", rotate=False, page_size=8, **kw)
        layer.update(k, v)
        kd = gather_kv(layer.k_cache, layer.k_meta, layer.block_table)[:, :, :t]
        if name == "pre_rope":
            kd = rotate_keys(kd + bias[None, :, None], layer.rope, torch.arange(t))
        err[name] = float((torch.softmax(q @ kd.transpose(-1, -2), -1) - true).abs().max())
    assert err["pre_rope"] < 0.1 and err["pre_rope"] < 0.25 * err["shift"], err  # seen: 0.048 vs 0.66


@pytest.mark.parametrize("max_cache_len", [None, 48])
def test_k_before_rope_decode_matches_one_forward_and_generates(max_cache_len):
    model = _tiny_qwen2(100.0)
    ids = _ids(2, 20)
    kw = dict(max_cache_len=max_cache_len, prefill="int4", page_size=8, k_before_rope=True)
    with torch.no_grad():
        full = model(ids, **with_cache(model, AtomKVCache(model, **kw)), use_cache=True).logits
        torch.testing.assert_close(_stepwise_logits(model, ids, 6, AtomKVCache(model, **kw)), full,
                                   atol=2e-4, rtol=1e-4)
        cache = AtomKVCache(model, max_cache_len=max_cache_len, k_before_rope=True)
        out = model.generate(ids[:1, :8], **with_cache(model, cache), max_new_tokens=8, do_sample=False)
    assert out.shape == (1, 16)


def test_k_before_rope_errors():
    model = _tiny_qwen2(1.0)
    with pytest.raises(ValueError, match="needs the model"):
        AtomKVCache(model.config, k_before_rope=True)
    from atom_ao.kv.cache import AtomKVLayer

    with pytest.raises(ValueError, match="k_shift is for keys cached after RoPE"):
        AtomKVLayer(k_shift=torch.zeros(2, 64), rope_inv_freq=torch.ones(32))
    with pytest.raises(ValueError, match="pass rope_inv_freq too"):
        AtomKVLayer(k_bias=torch.zeros(2, 64))
    layer = AtomKVLayer(rope_inv_freq=torch.ones(16))  # covers 32 of 64 channels
    with pytest.raises(NotImplementedError, match="partial rotary"):
        layer.update(torch.randn(1, 2, 3, 64), torch.randn(1, 2, 3, 64))


def test_k_before_rope_default_follows_the_k_bias():
    # None (default): before RoPE exactly for models with a k_proj bias (and RoPE), and not when
    # a k_shift of one's own asks for keys after RoPE
    qwen, llama = _tiny_qwen2(1.0), tiny_llama()
    assert all(layer.rope_inv_freq is not None and layer.k_bias is not None for layer in AtomKVCache(qwen).layers)
    assert not AtomKVCache(qwen).layers[0].rotate  # V plain in that mode (measured better on Qwen2.5)
    assert all(layer.rope_inv_freq is None for layer in AtomKVCache(llama).layers)
    assert all(layer.rope_inv_freq is None for layer in AtomKVCache(qwen, k_before_rope=False).layers)
    assert all(layer.rope_inv_freq is None for layer in AtomKVCache(qwen.config).layers)  # no model: no frequencies
    shifted = AtomKVCache(qwen, k_shift=[torch.zeros(2, 64)] * 2)
    assert all(layer.rope_inv_freq is None and layer.k_shift is not None for layer in shifted.layers)
    with pytest.raises(ValueError, match="k_shift applies to keys cached after RoPE"):
        AtomKVCache(qwen, k_before_rope=True, k_shift=[torch.zeros(2, 64)] * 2)


def test_with_cache_uses_the_keyword_the_model_takes():
    """``with_cache`` picks ``cache=`` where the model's forward has it (recent transformers 5.x),
    else ``past_key_values=``; generation through it equals generation through the other one."""
    import inspect

    model = tiny_llama(**MODELS[0])
    ids = _ids(1, 8)
    kw = with_cache(model, AtomKVCache(model))
    expected = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert list(kw) == [expected]
    gen = dict(max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(model.generate(ids, **kw, **gen),
                               model.generate(ids, past_key_values=AtomKVCache(model), **gen), atol=0, rtol=0)

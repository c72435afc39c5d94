"""A decode step with a static ``AtomKVCache`` under torch.compile(fullgraph=True) (CPU: the references)."""

import pytest
import torch

from atom_ao.kv import AtomKVCache, with_cache
from kv_testing import tiny_llama


def _decode(model, fwd, ids, steps=3, **cache_kw):
    cache = AtomKVCache(model, max_cache_len=32, page_size=8, **cache_kw)
    logits = []
    with torch.no_grad():
        nxt = model(ids, **with_cache(model, cache), use_cache=True).logits[:, -1:].argmax(-1)  # eager prefill
        for i in range(steps):
            pos = torch.full((ids.shape[0], 1), ids.shape[1] + i)
            out = fwd(nxt, **with_cache(model, cache), use_cache=True, position_ids=pos).logits
            logits.append(out)
            nxt = out[:, -1:].argmax(-1)
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("k_before_rope", [False, True])
def test_compiled_decode_step_matches_eager(k_before_rope):
    torch._dynamo.reset()
    model = tiny_llama()
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(0))
    eager, c_eager = _decode(model, model, ids, k_before_rope=k_before_rope)
    compiled, c_comp = _decode(model, torch.compile(model, fullgraph=True), ids, k_before_rope=k_before_rope)
    assert torch.equal(c_eager.layers[0].seq_lens, c_comp.layers[0].seq_lens)
    # Inductor may fuse the quantizer's arithmetic differently: a code can land one step apart
    rel = ((compiled - eager).norm() / eager.norm()).item()
    assert rel < 1e-2, rel
    assert torch.equal(compiled.argmax(-1), eager.argmax(-1))


def test_mask_function_widens_the_padding_mask_to_the_static_length():
    from atom_ao.kv.attention import _kv_start, atom_int4_mask

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)  # left padding
    wide = atom_int4_mask(attention_mask=mask, kv_length=8)
    assert wide.shape == (2, 8) and torch.equal(wide[:, :5], mask) and wide[:, 5:].all()
    assert torch.equal(_kv_start(wide), _kv_start(mask))
    assert atom_int4_mask(attention_mask=mask, kv_length=5) is mask  # growing cache: width = seen + new
    assert atom_int4_mask(attention_mask=None, kv_length=8) is None


def test_generate_compiles_the_static_cache_decode_step_once():
    # transformers compiles the decode step of a static cache; the mask it takes must keep one
    # shape (transformers 5.17 passed a mask one column wider each step: a recompile with a
    # dynamic width, and on a GPU a CUDA graph recorded per width)
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    torch._dynamo.reset()
    counters.clear()
    model = tiny_llama(layers=1)
    cfg = CompileConfig(mode=None, fullgraph=True)
    cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told (its own tests' flag)
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.generate(ids, **with_cache(model, AtomKVCache(model, max_cache_len=16, page_size=8)),
                             do_sample=False, min_new_tokens=6, max_new_tokens=6, pad_token_id=0, compile_config=cfg)
    assert out.shape == (1, 12)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.parametrize("k_before_rope", [False, True])
def test_every_tensor_of_a_static_cache_has_a_static_address(k_before_rope):
    # a CUDA graph (reduce-overhead) copies every input not marked static into its own buffer on
    # each replay: for the cache's tensors that is a copy per layer and step (the rotations were)
    model = tiny_llama()
    cache = AtomKVCache(model, max_cache_len=32, page_size=8, k_before_rope=k_before_rope)
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, **with_cache(model, cache), use_cache=True)
    for layer in cache.layers:
        tensors = {n: v for n, v in vars(layer).items()
                   if isinstance(v, torch.Tensor) and n != "rope_inv_freq"}  # read when allocating only
        assert ("hadamard_signs" in tensors) != k_before_rope
        loose = [n for n, v in tensors.items() if getattr(v, "_dynamo_static_input_type", None) is None]
        assert not loose, loose

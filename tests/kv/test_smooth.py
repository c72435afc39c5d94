"""Key smoothing (atom_ao.kv.smooth): exact for the float model, smaller error for the INT4 cache."""

import copy

import pytest
import torch

from atom_ao.eval.methods import kv4_forward
from atom_ao.kv.smooth import key_channel_max, key_scales, smooth_keys_
from kv_testing import tiny_llama


def _tokens(n=4, t=48, seed=1):
    return torch.randint(0, 512, (n, t), generator=torch.Generator().manual_seed(seed))


def _with_key_outliers(model, factor=25.0):
    """Key channels that are always large, as real Llama/Qwen keys have: a few k_proj rows
    scaled up (both channels of a RoPE pair, c and c + 32, and one lone channel)."""
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.k_proj.weight.view(-1, 64, layer.self_attn.k_proj.in_features)
            w[:, [5, 37, 20]] *= factor
    return model


def test_key_scales_pair_rope_channels():
    m = torch.rand(2, 64) + 0.1
    m[0, 3], m[1, 40] = 50.0, 80.0
    s = key_scales(m, 0.5)
    assert torch.equal(s[:, :32], s[:, 32:])
    assert s[0, 3] == s[0, 35] == 50.0 ** 0.5 and s[1, 8] == s[1, 40] == 80.0 ** 0.5
    assert torch.equal(key_scales(m, 0.0), torch.ones_like(m))


def test_smoothing_keeps_the_float_model():
    model = _with_key_outliers(tiny_llama())
    ids = _tokens()
    before = model(ids).logits
    scales = smooth_keys_(model, _tokens(seed=2), alpha=0.5, progress=False)
    assert set(scales) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    assert all(s.shape == (2, 64) for s in scales.values())
    after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


@pytest.mark.parametrize("qwen", [False, True])
def test_smoothing_shrinks_the_int4_cache_error(qwen):
    """The spread of key channel maxima shrinks (to its square root at alpha 0.5), and the model's
    logits with the plain INT4 cache come much closer to its float logits."""
    if qwen:
        from test_cache import _tiny_qwen2

        model = _with_key_outliers(_tiny_qwen2(100.0))  # K bias too: the cache stores keys before RoPE without it
        with torch.no_grad():  # scores large enough for the keys' rounding to show (else V's dominates)
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(8.0)
    else:
        model = _with_key_outliers(tiny_llama())
    ids, calib = _tokens(n=2, t=64), _tokens(seed=3)
    forward = kv4_forward(rotate=False)  # the plain cache: the rotation spreads outliers by itself
    smoothed = copy.deepcopy(model)
    spread = lambda m: (m.amax(-1) / m.median(-1).values).max().item()  # noqa: E731
    raw = key_channel_max(model, calib, progress=False)
    smooth_keys_(smoothed, calib, alpha=0.5, progress=False)
    new = key_channel_max(smoothed, calib, progress=False)
    for name in raw:
        assert spread(new[name]) < 1.5 * spread(raw[name]) ** 0.5
    err = {}
    for label, m in (("raw", model), ("smoothed", smoothed)):
        with torch.no_grad():
            ref = m(ids).logits
            err[label] = (forward(m, ids) - ref).abs().mean().item()
    assert err["smoothed"] < 0.6 * err["raw"], err


def test_smooth_keys_errors():
    model = tiny_llama()
    with pytest.raises(ValueError, match="alpha"):
        smooth_keys_(model, _tokens(), alpha=1.5)
    with pytest.raises(ValueError, match="no attention module"):
        smooth_keys_(torch.nn.Sequential(torch.nn.Linear(4, 4)), _tokens())
    model.model.layers[0].self_attn.k_norm = torch.nn.Identity()
    with pytest.raises(ValueError, match="k_norm"):
        smooth_keys_(model, _tokens())


def test_smooth_keys_refuses_a_quantized_model():
    from torchao.quantization import quantize_

    import atom_ao

    model = tiny_llama()
    quantize_(model, atom_ao.atom_config(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lm_head" not in fqn)
    with pytest.raises(ValueError, match="already quantized"):
        smooth_keys_(model, _tokens())

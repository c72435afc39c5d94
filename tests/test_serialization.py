"""torch.save / torch.load(weights_only=True) and safetensors round trips are bit-exact."""

import pytest
import torch
from torchao.quantization import quantize_

import atom_ao
from atom_ao import AtomQuantTensor, atom_config, load_quantized, save_quantized
from test_handler import tiny_llama


def _quantized_model():
    model = tiny_llama(layers=1)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    atom_ao.quantize_calibrated(model, ids, atom_config(n_outliers=64), progress=False,
                                filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    return model, ids


def _assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert type(x) is type(y), key
        if isinstance(x, AtomQuantTensor):
            for name in x.tensor_data_names:
                assert torch.equal(getattr(x, name), getattr(y, name)), (key, name)
            assert (x.group_size, x.act_clip_ratio, x.dtype) == (y.group_size, y.act_clip_ratio, y.dtype)
        else:
            assert torch.equal(x, y), key


def test_torch_save_load_weights_only(tmp_path):
    model, ids = _quantized_model()
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    _assert_same_state(model.state_dict(), sd)
    fresh = tiny_llama(layers=1, seed=1)
    quantize_(fresh, atom_config(n_outliers=64), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    fresh.load_state_dict(sd, assign=True)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_safetensors_round_trip(tmp_path):
    model, ids = _quantized_model()
    path = str(tmp_path / "model.safetensors")
    save_quantized(model, path)
    fresh = load_quantized(tiny_llama(layers=1, seed=1), path)  # a float model, no calibration
    _assert_same_state(model.state_dict(), fresh.state_dict())
    attn = fresh.model.layers[0].self_attn
    perm_ptr = lambda m: m.weight.perm.untyped_storage().data_ptr()  # noqa: E731
    assert perm_ptr(attn.q_proj) == perm_ptr(attn.k_proj)  # sharing survives the file
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_corrupt_checkpoint_is_refused(tmp_path):
    from atom_ao.serialization import flatten_state_dict, unflatten_state_dict

    model, _ = _quantized_model()
    tensors, meta = flatten_state_dict(model.state_dict())
    key = "model.layers.0.mlp.down_proj.weight:scale"
    tensors[key] = tensors[key][:, :1]
    with pytest.raises(ValueError, match="scale"):
        unflatten_state_dict(tensors, meta)


def test_tied_weights_are_written_once_and_tied_on_load(tmp_path):
    from safetensors import safe_open

    model, ids = _quantized_model()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as SmolLM2 / Qwen2.5-0.5B are
    path = str(tmp_path / "model.safetensors")
    save_quantized(model, path)
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    fresh = load_quantized(tiny_llama(layers=1, seed=1), path)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    _assert_same_state(model.state_dict(), fresh.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)

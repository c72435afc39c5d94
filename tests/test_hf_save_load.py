"""atom_ao.save_pretrained / from_pretrained of a transformers model: no calibration data on load,
bit-identical weights and logits, tied weights and shared permutations restored, and no pickle."""

import json
import pickle

import pytest
import torch
from torchao.quantization import quantize_

import atom_ao
from atom_ao import AtomQuantTensor, atom_config
from atom_ao.hf import WEIGHTS_NAME
from atom_ao.tensor import AtomQuantTensorTransposed
from test_handler import tiny_llama

NOT_LM_HEAD = lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head"  # noqa: E731
IDS = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))


def _assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, x in sa.items():
        y = sb[key]
        assert type(x) is type(y) and x.dtype == y.dtype, key
        if isinstance(x, AtomQuantTensor):
            for name in x.tensor_data_names:
                assert torch.equal(getattr(x, name), getattr(y, name)), (key, name)
            assert (x.group_size, x.act_clip_ratio) == (y.group_size, y.act_clip_ratio), key
        else:
            assert torch.equal(x, y), key


def test_calibrated_model_round_trip(tmp_path):
    model = tiny_llama(layers=2)
    atom_ao.quantize_calibrated(model, IDS, atom_config(n_outliers=64, weight_clip_ratio=1.0), progress=False,
                                filter_fn=NOT_LM_HEAD)
    out = atom_ao.save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["atom_ao_model.safetensors", "config.json",
                                                     "generation_config.json"]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "atom_ao" and len(qc["modules"]) == 14
    assert qc["modules"]["model.layers.1.mlp.down_proj"] == {"group_size": 128, "n_outliers": 64,
                                                             "act_clip_ratio": 0.9}
    assert not hasattr(model.config, "quantization_config")  # the user's model is left as it was

    loaded = atom_ao.from_pretrained(out)  # a fresh model: architecture from config.json, no data
    assert type(loaded) is type(model) and not loaded.training
    _assert_bit_identical(model, loaded)
    attn = loaded.model.layers[0].self_attn
    ptr = lambda m: m.weight.perm.untyped_storage().data_ptr()  # noqa: E731
    assert ptr(attn.q_proj) == ptr(attn.k_proj) == ptr(attn.v_proj)  # one permutation, as before
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
        assert torch.equal(loaded.generate(IDS, max_new_tokens=3, do_sample=False),
                           model.generate(IDS, max_new_tokens=3, do_sample=False))


def test_bf16_tied_embeddings_round_trip(tmp_path):
    model = tiny_llama(layers=1)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    for p in model.parameters():  # as transformers loads bf16: parameters only (rotary inv_freq stays fp32)
        p.data = p.data.to(torch.bfloat16)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    quantize_(model, atom_config(n_outliers=64, weight_clip_ratio=1.0), filter_fn=NOT_LM_HEAD)
    loaded = atom_ao.from_pretrained(atom_ao.save_pretrained(model, tmp_path))
    _assert_bit_identical(model, loaded)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied again, stored once
    assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_plain_transformers_loading_is_refused_not_garbage(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(layers=1)
    quantize_(model, atom_config(n_outliers=64, weight_clip_ratio=1.0), filter_fn=NOT_LM_HEAD)
    atom_ao.save_pretrained(model, tmp_path)
    # transformers finds no model.safetensors: an error, not random weights in place of packed ones
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    # saving over a float checkpoint would leave transformers a file to load instead of ours
    float_dir = tmp_path / "float"
    tiny_llama(layers=1).save_pretrained(float_dir)
    with pytest.raises(FileExistsError, match="model.safetensors"):
        atom_ao.save_pretrained(model, float_dir)
    with pytest.raises(ValueError, match="not an atom_ao checkpoint"):
        atom_ao.from_pretrained(float_dir)
    with pytest.raises(ValueError, match="no Atom-quantized weight"):
        atom_ao.save_pretrained(tiny_llama(layers=1), tmp_path / "none")
    assert (tmp_path / WEIGHTS_NAME).exists()


class _Payload:
    """A pickle that would call an atom_ao function when unpickled."""

    def __reduce__(self):
        return (atom_ao.hf.from_pretrained, ("/nonexistent",))


def test_weights_only_allow_lists_only_atom_quant_tensor(tmp_path):
    atom_globals = [g for g in torch.serialization.get_safe_globals()
                    if getattr(g, "__module__", "").startswith("atom_ao")]
    assert atom_globals == [AtomQuantTensor]
    model = tiny_llama(layers=1)
    quantize_(model, atom_config(n_outliers=64, weight_clip_ratio=1.0), filter_fn=NOT_LM_HEAD)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    sd = torch.load(tmp_path / "sd.pt", weights_only=True)
    assert isinstance(sd["model.layers.0.self_attn.q_proj.weight"], AtomQuantTensor)
    w = model.model.layers[0].self_attn.q_proj.weight
    for obj in (w.t(), _Payload()):  # an atom_ao tensor class that is not allow-listed; a function
        torch.save({"x": obj}, tmp_path / "bad.pt")
        assert isinstance(obj, AtomQuantTensorTransposed) or "from_pretrained" in str(pickle.dumps(obj))
        with pytest.raises(pickle.UnpicklingError, match="weights_only"):
            torch.load(tmp_path / "bad.pt", weights_only=True)

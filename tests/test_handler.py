"""The quantize_ handler: config validation, prepare/convert, shared permutations, layer errors."""

import pytest
import torch
from torchao.quantization import quantize_
from transformers import LlamaConfig, LlamaForCausalLM

import atom_ao
from atom_ao import AtomObservedLinear, AtomQuantTensor, atom_config


def tiny_llama(hidden=256, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kwargs, match", [
    (dict(group_size=100), "group_size"),
    (dict(n_outliers=10), "n_outliers"),
    (dict(act_clip_ratio=1.5), "act_clip_ratio"),
    (dict(weight_clip_ratio=0.0), "weight_clip_ratio"),
    (dict(step="calibrate"), "step"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        atom_config(**kwargs)


def test_prepare_convert_shares_permutations():
    model = tiny_llama()
    ids = torch.randint(0, 512, (2, 24))
    quantize_(model, atom_config(n_outliers=64, step="prepare"), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lm_head" not in fqn)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, AtomObservedLinear)
    atom_ao.calibrate(model, ids, progress=False)
    assert int(attn.q_proj.act_tokens) == 48
    quantize_(model, atom_config(n_outliers=64, step="convert"))
    q, k, v, o = (getattr(attn, f"{p}_proj").weight for p in "qkvo")
    assert all(isinstance(t, AtomQuantTensor) for t in (q, k, v, o))
    # q/k/v see one input: one permutation, one storage
    assert q.perm.untyped_storage().data_ptr() == k.perm.untyped_storage().data_ptr() == v.perm.untyped_storage().data_ptr()
    assert not torch.equal(q.perm, o.perm)
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.weight.perm.untyped_storage().data_ptr() == mlp.up_proj.weight.perm.untyped_storage().data_ptr()
    assert not isinstance(model.lm_head.weight, AtomQuantTensor)


def test_calibrated_outliers_are_the_loud_channels():
    lin = torch.nn.Sequential(torch.nn.Linear(256, 32))
    x = torch.randn(64, 256)
    loud = torch.tensor([3, 77, 150, 255])
    x[:, loud] *= 80
    atom_ao.quantize_calibrated(lin, [x], atom_config(n_outliers=16), progress=False)
    perm = lin[0].weight.perm
    assert set(loud.tolist()) <= set(perm[-16:].tolist())
    assert sorted(perm.tolist()) == list(range(256))


def test_convert_without_data_names_the_layer():
    model = tiny_llama(layers=1)
    quantize_(model, atom_config(step="prepare"))
    with pytest.raises(RuntimeError, match=r"layer 'model.layers.0.self_attn.q_proj'.*no calibration data"):
        quantize_(model, atom_config(step="convert"))


def test_small_k_refused_with_layer_name():
    model = torch.nn.Sequential(torch.nn.Linear(512, 64), torch.nn.Linear(64, 8))
    with pytest.raises(ValueError, match=r"layer '1'.*in_features=64 must exceed n_outliers=128"):
        quantize_(model, atom_config())


def test_k_not_multiple_of_group_is_padded():
    lin = torch.nn.Linear(576, 40)  # SmolLM2's hidden size: 448 normal channels -> 4 groups
    ref = torch.nn.Linear(576, 40)
    ref.load_state_dict(lin.state_dict())
    quantize_(lin, atom_config())
    assert lin.weight.qdata.shape == (40, 256) and lin.weight.scale.shape == (40, 4)
    x = torch.randn(9, 576)
    with torch.no_grad():
        err = (lin(x) - ref(x)).pow(2).mean() / ref(x).pow(2).mean()
    assert err < 0.05


def test_data_free_quantizes_whole_model_and_runs():
    model = tiny_llama(layers=1)
    ids = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        ref = model(ids).logits
        quantize_(model, atom_config(n_outliers=64))
        out = model(ids).logits
    assert isinstance(model.lm_head.weight, AtomQuantTensor)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.95

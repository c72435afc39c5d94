"""Folding down_proj's permutation into gate/up rows changes nothing but the permutation."""

import torch

import atom_ao
from atom_ao import atom_config
from atom_ao.fold import fold_mlp_permutations
from test_handler import tiny_llama


def test_fold_mlp_permutations_keeps_outputs():
    model = tiny_llama(layers=2)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    atom_ao.quantize_calibrated(model, ids, atom_config(n_outliers=64), progress=False, fold=False,
                                filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    with torch.no_grad():
        before = model(ids).logits
        assert fold_mlp_permutations(model) == 2
        after = model(ids).logits
    down = model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(down.perm, torch.arange(down.shape[1], dtype=torch.int32))
    # the same integers in a different channel order: equal up to float summation order
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert fold_mlp_permutations(model) == 0  # idempotent


def test_quantize_calibrated_folds_by_default():
    model = tiny_llama(layers=2)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    atom_ao.quantize_calibrated(model, ids, atom_config(n_outliers=64), progress=False,
                                filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    for layer in model.model.layers:
        down = layer.mlp.down_proj.weight
        assert torch.equal(down.perm, torch.arange(down.shape[1], dtype=torch.int32))
        assert not torch.equal(layer.self_attn.q_proj.weight.perm, torch.arange(down.shape[0], dtype=torch.int32))


def test_simulate_refuses_to_mix_folded_layers_with_float_ones():
    import copy

    import pytest

    from atom_ao.eval.simulate import simulate_

    base = tiny_llama(layers=1)
    model = copy.deepcopy(base)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    atom_ao.quantize_calibrated(model, ids, atom_config(n_outliers=64), progress=False,
                                filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    for kw in (dict(only="gate_proj"), dict(weights=False)):  # folded gate rows vs float up rows: wrong
        with pytest.raises(ValueError, match="fold=False"):
            simulate_(copy.deepcopy(model), float_model=base, **kw)
    simulate_(copy.deepcopy(model), float_model=base)  # the whole model simulated: fine

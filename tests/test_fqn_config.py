"""torchao's FqnToConfig: atom_config() on some layers, torchao's own configs on others, in one
model, eager and compiled.

torchao 0.18's ``quantize_`` has ``filter_fn=_is_linear`` as its default and refuses any
filter_fn together with an FqnToConfig: pass ``filter_fn=None`` explicitly.
"""

import pytest
import torch
from torchao.quantization import FqnToConfig, Int8DynamicActivationInt8WeightConfig, quantize_
from torchao.quantization import Int8WeightOnlyConfig

import atom_ao
from atom_ao import AtomObservedLinear, AtomQuantTensor, atom_config
from test_handler import tiny_llama

ATOM = atom_config(n_outliers=64, weight_clip_ratio=1.0)
BLOCK_LINEARS = r"re:model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"


def _weight_types(model) -> dict[str, str]:
    return {n: type(m.weight).__name__ for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_mixed_configs_compiled_close_to_eager():
    model = tiny_llama(layers=1)
    quantize_(model, FqnToConfig({
        BLOCK_LINEARS: ATOM,                                       # regex key: every block linear
        "model.layers.0.mlp.down_proj": Int8WeightOnlyConfig(),    # an exact key wins over the regex
        "lm_head": Int8DynamicActivationInt8WeightConfig(),
    }), filter_fn=None)
    types = _weight_types(model)
    assert types.pop("lm_head") == "Int8Tensor" and types.pop("model.layers.0.mlp.down_proj") == "Int8Tensor"
    assert set(types.values()) == {"AtomQuantTensor"} and len(types) == 6

    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True)(ids).logits
    # inductor fuses the float ops around the quantizers differently: a last-bit change may flip
    # an INT4/INT8 rounding somewhere, so close, not equal
    torch.testing.assert_close(compiled, eager, rtol=0, atol=2e-2 * eager.abs().max().item())
    cos = torch.nn.functional.cosine_similarity(compiled.flatten(), eager.flatten(), dim=0)
    assert cos > 0.9999, cos


def test_calibrated_prepare_convert_through_fqn_to_config():
    """prepare / calibrate / convert with the same keys; the convert step may put torchao's
    configs on the layers Atom left out. q/k/v (same input) share one permutation."""
    model = tiny_llama(layers=1)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    quantize_(model, FqnToConfig({BLOCK_LINEARS: atom_config(n_outliers=64, step="prepare")}), filter_fn=None)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, AtomObservedLinear) and not isinstance(model.lm_head, AtomObservedLinear)
    atom_ao.calibrate(model, ids, progress=False)
    quantize_(model, FqnToConfig({
        BLOCK_LINEARS: atom_config(n_outliers=64, step="convert"),
        "lm_head": Int8DynamicActivationInt8WeightConfig(),
    }), filter_fn=None)
    types = _weight_types(model)
    assert types.pop("lm_head") == "Int8Tensor" and set(types.values()) == {"AtomQuantTensor"}
    ptr = lambda m: m.weight.perm.untyped_storage().data_ptr()  # noqa: E731
    assert ptr(attn.q_proj) == ptr(attn.k_proj) == ptr(attn.v_proj) != ptr(attn.o_proj)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_none_leaves_a_layer_float_and_parameter_keys_are_refused():
    model = tiny_llama(layers=1)
    quantize_(model, FqnToConfig({"model.layers.0.self_attn.q_proj": None, BLOCK_LINEARS: ATOM}), filter_fn=None)
    types = _weight_types(model)
    assert types["model.layers.0.self_attn.q_proj"] == "Parameter"
    assert types["model.layers.0.self_attn.k_proj"] == "AtomQuantTensor" and types["lm_head"] == "Parameter"
    assert isinstance(model.model.layers[0].mlp.up_proj.weight, AtomQuantTensor)
    # AtomConfig quantizes a whole linear (its weight, with the input permutation it implies):
    # key it by the module's name, not by "<module>.weight"
    with pytest.raises(NotImplementedError, match="parameter quantization"):
        quantize_(tiny_llama(layers=1), FqnToConfig({"lm_head.weight": ATOM}), filter_fn=None)

"""atom_ao.unwrap: AtomLinear (an Atom weight held as five plain buffers) against the
nn.Linear + AtomQuantTensor it replaces: same numbers eager and compiled, same state dict,
dtype / device moves, and what the compiled graph takes as inputs."""

import copy

import pytest
import torch
from torchao.quantization import quantize_

import atom_ao
from atom_ao import AtomLinear, AtomQuantTensor, atom_config, unwrap_weights, wrap_weights
from conftest import outlier_activations, sqnr


class Block(torch.nn.Module):
    """q/k/v fed by one activation (one shared permutation after calibration) and an MLP."""

    def __init__(self, d=256, h=384):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d, bias=b) for b in (True, False, False))
        self.up, self.down = torch.nn.Linear(d, h), torch.nn.Linear(h, d, bias=False)

    def forward(self, x):
        a = self.q(x) + self.k(x) * self.v(x)
        return self.down(torch.relu(self.up(a)))


def _quantized_block(seed=0):
    torch.manual_seed(seed)
    model = Block()
    x, _ = outlier_activations(32, 256, n_outlier_channels=4, seed=seed)
    atom_ao.quantize_calibrated(model, [x], atom_config(n_outliers=128), progress=False)
    return model, x


def test_same_numbers_and_state_dict_as_the_subclass_weights():
    model, x = _quantized_block()
    ref = copy.deepcopy(model)
    unwrap_weights(model)
    assert all(type(m) is AtomLinear for m in (model.q, model.k, model.v, model.up, model.down))
    assert "weight" not in model.q._parameters and isinstance(model.q.weight, AtomQuantTensor)
    assert model.q.perm.data_ptr() == model.k.perm.data_ptr()  # q/k/v still share one permutation
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    sd, sd_ref = model.state_dict(), ref.state_dict()
    assert list(sd) == list(sd_ref)
    for key, v in sd_ref.items():
        assert type(sd[key]) is type(v) or isinstance(v, AtomQuantTensor)
        assert torch.equal(sd[key].dequantize() if isinstance(v, AtomQuantTensor) else sd[key],
                           v.dequantize() if isinstance(v, AtomQuantTensor) else v)
    assert "unwrapped" in repr(model.q) and "n_outliers=128" in repr(model.q)
    wrap_weights(model)  # and back
    assert type(model.q) is torch.nn.Linear and isinstance(model.q.weight, AtomQuantTensor)
    assert "AtomQuantTensor" in repr(model.q)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_save_and_load_through_an_unwrapped_model(tmp_path):
    model, x = _quantized_block()
    unwrap_weights(model)
    atom_ao.save_quantized(model, str(tmp_path / "m.safetensors"))
    fresh = unwrap_weights(atom_ao.load_quantized(Block(), str(tmp_path / "m.safetensors")))
    other, _ = _quantized_block(seed=1)
    unwrap_weights(other).load_state_dict(model.state_dict())  # into buffers of another unwrapped model
    with torch.no_grad():
        for m in (fresh, other):
            torch.testing.assert_close(m(x), model(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):
        unwrap_weights(_quantized_block()[0]).load_state_dict({})


def test_dtype_moves_keep_float32_scales():
    model, x = _quantized_block()
    ref = copy.deepcopy(model).to(torch.bfloat16)
    unwrap_weights(model).to(torch.bfloat16)
    assert model.q.scale.dtype == torch.float32 and model.q.outlier_scale.dtype == torch.float32
    assert model.q.weight.dtype == torch.bfloat16 and model.q.bias.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(model(x.bfloat16()), ref(x.bfloat16()), rtol=0, atol=0)


def test_bad_input_and_asymmetric_weights():
    model, x = _quantized_block()
    unwrap_weights(model)
    with pytest.raises(ValueError, match="input has 100 features, weight expects 256"):
        model.q(torch.randn(2, 100))
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        model.q(torch.ones(2, 256, dtype=torch.int32))
    lin = torch.nn.Linear(256, 64)
    quantize_(lin, atom_config(act_mapping="asymmetric"))
    assert type(unwrap_weights(lin)) is torch.nn.Linear  # left as it is


def _compiled_inputs(model, x):
    seen = []

    def backend(gm, example_inputs):
        seen.extend(type(t) for t in example_inputs)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend=backend, fullgraph=True)(x)
    return out, seen


def test_compiled_graph_takes_plain_tensors_only():
    model, x = _quantized_block()
    _, seen_wrapped = _compiled_inputs(model, x)
    assert AtomQuantTensor in seen_wrapped  # the subclass weights are inputs of the compiled call
    with torch.no_grad():
        ref = model(x)
    out, seen = _compiled_inputs(unwrap_weights(model), x)
    assert AtomQuantTensor not in seen and set(seen) <= {torch.Tensor, torch.nn.Parameter}
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_inductor_compiled_matches_eager():
    model, x = _quantized_block()
    unwrap_weights(model)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_unwrapped_bf16_eager_and_compiled_match_subclass_weights(device):
    model, x = _quantized_block()
    model, x = model.to(device, torch.bfloat16), x.to(device, torch.bfloat16)
    ref = copy.deepcopy(model)
    unwrap_weights(model)
    with torch.no_grad():
        expect = ref(x)
        torch.testing.assert_close(model(x), expect, rtol=0, atol=0)  # eager: the same ops / direct launches
        torch._dynamo.reset()
        compiled_ref = torch.compile(ref, fullgraph=True)(x)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)(x)
    # compiled: the same graph as the subclass weights'. Not bitwise against eager: Inductor sums
    # q + k * v in float32 and rounds once, which moves a few bf16 inputs of the next quantizer
    # across a code boundary (~28 dB between the two, the noise of one more INT4 rounding;
    # scripts/unwrap_compile_diag.py)
    assert sqnr(compiled_ref, compiled) > 50
    assert sqnr(expect, compiled) > 20

"""``AtomConfig(act_mapping="asymmetric")`` end to end on CPU (the reference ops): the weight
carries its group sums, the linear adds the zero-point term, calibration / GPTQ / compile /
save-load keep it, and on activations with an offset it beats the symmetric format."""

import copy

import pytest
import torch
from torchao.quantization import quantize_

import atom_ao
from atom_ao import atom_config
from atom_ao.format import weight_group_sums
from atom_ao.gptq import fake_quantize_activation
from conftest import sqnr
from test_handler import tiny_llama


def _linear_and_input(seed=0, shift=1.0, loud=True):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(640, 96, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 640, generator=g) * 0.05)
    x = torch.randn(9, 640, generator=g) + shift  # one-sided groups: where a zero point pays
    if loud:  # a channel 60x louder (data-free quantize_ cannot see it: it stays in a group)
        x[:, 7] *= 60
    return lin, x


def test_config_spellings():
    from torchao.quantization.quant_primitives import MappingType
    assert atom_config(act_mapping=MappingType.ASYMMETRIC).act_mapping == "asymmetric"
    assert atom_config(act_mapping="SYMMETRIC").act_mapping == "symmetric"
    with pytest.raises(ValueError, match="act_mapping"):
        atom_config(act_mapping="affine")


def test_linear_is_the_format_math():
    lin, x = _linear_and_input()
    m = copy.deepcopy(lin)
    quantize_(m, atom_config(n_outliers=64, act_mapping="asymmetric"))
    w = m.weight
    assert w.act_asymmetric and w.scale.shape == (96, 2 * w.groups) and "asymmetric" in repr(w)
    assert torch.equal(w.scale[:, w.groups:], weight_group_sums(w.qdata, w.weight_scale, w.group_size))
    # y = fake-quantized activations (with zero points) @ dequantized weight, to float rounding
    xq = fake_quantize_activation(x, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio, asymmetric=True)
    want = torch.nn.functional.linear(xq, w.dequantize(), lin.bias)
    assert sqnr(want, m(x)) > 100
    # same weight codes as the symmetric format; better outputs on offset activations (with
    # no loud channel in a group: its range would dominate either format)
    sym = copy.deepcopy(lin)
    quantize_(sym, atom_config(n_outliers=64))
    assert torch.equal(sym.weight.qdata, w.qdata) and torch.equal(sym.weight.dequantize(), w.dequantize())
    _, x = _linear_and_input(loud=False, shift=2.0)
    ref = lin(x)
    assert sqnr(ref, m(x)) > sqnr(ref, sym(x)) + 1.0


def test_slice_save_load_and_compile(tmp_path):
    lin, x = _linear_and_input(seed=1)
    quantize_(lin, atom_config(n_outliers=64, act_mapping="asymmetric"))
    w = lin.weight
    assert w[:32].act_asymmetric and torch.equal(w[:32].scale, w.scale[:32])
    path = tmp_path / "w.pt"
    torch.save(lin.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert sd["weight"].act_asymmetric and torch.equal(sd["weight"].scale, w.scale)
    torch._dynamo.reset()
    with torch.no_grad():  # inference (the bias is a trainable Parameter; the ops have no backward)
        eager = lin(x)
        compiled = torch.compile(lin)(x)
    assert sqnr(eager, compiled) > 60


@pytest.mark.parametrize("method, hessian", [("rtn", "float"), ("gptq", "quant")])
def test_calibrated_model(method, hessian):
    """The calibrated flow (incl. GPTQ on the Hessian of asymmetric-quantized inputs) builds
    asymmetric weights and the model runs, close to its float self."""
    model = tiny_llama(layers=1)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    cfg = atom_config(n_outliers=64, act_mapping="asymmetric", weight_method=method, gptq_hessian=hessian)
    atom_ao.quantize_calibrated(model, ids, cfg, progress=False,
                                filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head")
    ws = [m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), atom_ao.AtomQuantTensor)]
    assert ws and all(w.act_asymmetric for w in ws)
    with torch.no_grad():
        assert sqnr(ref, model(ids).logits) > 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [1, 16, 300])
def test_cuda_linear_matches_the_reference(m):
    """The kernels (fused quantizer with zero points, GEMM, the zero-point matmul) against the
    same weight run by the reference ops on CPU."""
    g = torch.Generator().manual_seed(m)
    lin = torch.nn.Linear(4096, 1024, bias=True).to(torch.bfloat16)
    x = (torch.randn(m, 4096, generator=g) + 0.5).to(torch.bfloat16)
    quantize_(lin, atom_config(act_mapping="asymmetric"))
    with torch.no_grad():
        want = lin(x).float()
        got = lin.cuda()(x.cuda()).float().cpu()
    assert sqnr(want, got) > 40

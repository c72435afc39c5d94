"""explore_pdl's chain on CPU (Triton's interpreter, tiny shapes, no PDL: the interpreter has no
grid dependency control): each linear quantizes the previous one's output and matches the
reference op on it; the gemv-only form on pre-quantized tokens gives the same bits."""

import pytest
import torch

import cpu_smoke  # noqa: F401  (benchmarks on the path)
import explore_pdl

from atom_ao.ops.w4a4_gemm import w4a4_gemm_ref

SHAPES = (("up", 256, 384), ("down", 384, 256))


@pytest.mark.parametrize("splits", [1, 2])
def test_chain_follows_the_reference(splits):
    torch.manual_seed(0)
    layers = explore_pdl.quantized_linears(2, SHAPES, device="cpu")
    x0 = torch.randn(1, 256, dtype=torch.bfloat16)
    x0[:, :4] *= 60
    got = explore_pdl.run_chain(layers, x0, False, False, splits)
    # linear by linear on the chain's own outputs (a quantized chain amplifies any rounding
    # difference, so the whole chain is compared with its own steps, bit for bit)
    x = x0
    for layer in layers:
        for lin in layer:
            _, k, w, ops = lin
            step = explore_pdl.run_chain([[lin]], x, False, False, splits)
            a = torch.ops.atom_ao.quantize_activation(x[:, :k], w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
            want = w4a4_gemm_ref(*a, *ops, None, w.group_size, torch.float32)
            torch.testing.assert_close(step.float(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
            x = step
    assert got.shape == (1, 256) and got.abs().max() > 0
    assert torch.equal(got, x)
    tokens = explore_pdl.quantize_all(layers, x0, splits)
    assert len(tokens) == 4
    assert torch.equal(explore_pdl.run_chain(layers, x0, False, False, splits, tokens), got)


def test_needs_an_sm90_gpu():
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9:
        pytest.skip("has an sm90+ GPU")
    with pytest.raises(SystemExit, match="sm90"):
        explore_pdl.main(["--layers", "1"])

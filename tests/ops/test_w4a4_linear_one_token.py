"""One token quantized inside the dp4a GEMM (``atom_ao::w4a4_linear_one_token``) against the two
ops it replaces: the quantizer kernel then the gemv (the same bits), and the references."""

import pytest
import torch
from torch.library import opcheck

from atom_ao.format import quantize_activation_ref, w4a4_gemm_ref
from atom_ao.ops.quantize_activation import quantize_activation_triton
from atom_ao.ops.w4a4_gemm import w4a4_gemm_triton
from atom_ao.ops.w4a4_linear_one_token import w4a4_linear_one_token_triton
from atom_ao.weight import quantize_weight
from conftest import outlier_activations

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _operands(n, k, n_out, gs, dtype, bias, seed=0, device=DEVICE):
    x, _ = outlier_activations(1, k, dtype=dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(k, generator=gen).to(torch.int32)
    wq = quantize_weight(torch.randn(n, k, generator=gen) * 0.05, perm, n_out, gs, clip_ratio=0.9)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    w = [wq["qdata"], wq["scale"], wq["outlier_qdata"], wq["outlier_scale"]]
    to = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return to(x), to(perm), [to(t) for t in w], to(b)


def _two_ops(x, perm, n_out, gs, w, b, splits):
    a = quantize_activation_triton(x, perm, n_out, gs, 0.9)
    return w4a4_gemm_triton(*a, *w, b, gs, x.dtype, path="gemv", splits=splits)


@pytest.mark.parametrize("n, k, n_out, gs, splits", [
    (40, 200, 32, 64, 1),          # N off the row tile, K padded to whole groups
    (48, 5 * 64 + 32, 32, 64, 2),  # a partial step in a split
    (64, 7 * 64 + 16, 16, 64, 3),  # 7 groups in 3 splits, 16 outliers
    (33, 320, 0, 128, 1),          # no outliers
])
@pytest.mark.parametrize("dtype, bias", [(torch.bfloat16, True), (torch.float16, False), (torch.float32, True)])
def test_fused_equals_quantizer_then_gemv(n, k, n_out, gs, splits, dtype, bias):
    x, perm, w, b = _operands(n, k, n_out, gs, dtype, bias)
    fused = w4a4_linear_one_token_triton(x, perm, n_out, gs, 0.9, *w, b, dtype, splits=splits)
    # the quantizer's arithmetic in the GEMM's loop, then the same GEMM math: the same bits
    torch.testing.assert_close(fused, _two_ops(x, perm, n_out, gs, w, b, splits), rtol=0, atol=0)
    cpu = [t.cpu() if t is not None else None for t in (x, perm, *w, b)]
    want = w4a4_gemm_ref(*quantize_activation_ref(cpu[0], cpu[1], n_out, gs, 0.9), *cpu[2:], gs, torch.float32)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(fused.float().cpu(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_nan_token_gives_nan_row():
    x, perm, w, b = _operands(32, 256, 32, 64, torch.bfloat16, False)
    x[0, int(perm[5])] = float("nan")  # a channel of group 0
    assert w4a4_linear_one_token_triton(x, perm, 32, 64, 0.9, *w, b, torch.bfloat16).isnan().all()


def test_bad_inputs_are_refused():
    x, perm, w, b = _operands(32, 256, 32, 64, torch.bfloat16, True)
    with pytest.raises(ValueError, match="one token"):
        w4a4_linear_one_token_triton(x.expand(2, -1), perm, 32, 64, 0.9, *w, b, torch.bfloat16)
    with pytest.raises(ValueError, match="perm"):
        w4a4_linear_one_token_triton(x, perm.long(), 32, 64, 0.9, *w, b, torch.bfloat16)
    with pytest.raises(ValueError, match="w_scale"):
        w4a4_linear_one_token_triton(x, perm, 32, 64, 0.9, w[0], w[1][:, :-1], *w[2:], b, torch.bfloat16)
    with pytest.raises(ValueError, match="w_packed"):  # x has a group fewer than the weight
        w4a4_linear_one_token_triton(x[:, :-64], perm[:-64], 32, 64, 0.9, *w, b, torch.bfloat16)


def test_opcheck():
    x, perm, w, b = _operands(32, 256, 32, 64, torch.bfloat16, True, device="cpu")
    opcheck(torch.ops.atom_ao.w4a4_linear_one_token.default, (x, perm, 32, 64, 0.9, *w, b, torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("splits", [None, 1, 4])
@pytest.mark.parametrize("n, k", [(4096, 4096), (12288, 4096), (4096, 11008), (22016, 4096), (1000, 4096 + 128)])
def test_fused_real_shapes_gpu(n, k, splits):
    x, perm, w, b = _operands(n, k, 128, 128, torch.bfloat16, True)
    fused = w4a4_linear_one_token_triton(x, perm, 128, 128, 0.9, *w, b, torch.bfloat16, splits=splits)
    if splits is None:
        from atom_ao.ops.w4a4_gemm import _sm_count
        from atom_ao.ops.w4a4_gemv import gemv_split_k
        splits = gemv_split_k(n, w[1].shape[1], _sm_count(x.device))
    torch.testing.assert_close(fused, _two_ops(x, perm, 128, 128, w, b, splits), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_linear_takes_the_fused_kernel_when_on(monkeypatch):
    """With FUSED_ONE_TOKEN the quantized linear at M = 1 runs one kernel (eager and compiled), with
    the bits of the two-op path."""
    import atom_ao.tensor as t
    from atom_ao import atom_config
    from torch._inductor.utils import run_and_get_code
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    lin = torch.nn.Linear(4096, 4096, bias=True, device="cuda", dtype=torch.bfloat16)
    quantize_(lin, atom_config())
    x = outlier_activations(1, 4096, dtype=torch.bfloat16)[0].cuda()
    with torch.no_grad():
        two = lin(x)
        monkeypatch.setattr(t, "FUSED_ONE_TOKEN", True)
        torch.testing.assert_close(lin(x), two, rtol=0, atol=0)
        torch._dynamo.reset()
        compiled, codes = run_and_get_code(torch.compile(lin, fullgraph=True), x)
    code = "\n".join(codes)
    assert "_w4a4_gemv_quantize_kernel" in code and "_quantize_activation_kernel" not in code
    torch.testing.assert_close(compiled, two, rtol=1e-2, atol=1e-2 * two.abs().max().item())

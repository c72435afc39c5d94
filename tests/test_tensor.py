"""AtomQuantTensor: construction, tensor ops, the linear path and its edge cases."""

import copy

import pytest
import torch
from torchao.quantization import quantize_

import atom_ao
from atom_ao import AtomQuantTensor, atom_config
from atom_ao.weight import data_free_channel_score, outlier_permutation
from conftest import outlier_activations, quantize_with_permutations, sqnr, two_permutations


def _calibrated_linear(k, n, n_outliers, x, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    ref = copy.deepcopy(lin)
    model = torch.nn.Sequential(lin)
    atom_ao.quantize_calibrated(model, [x], atom_config(n_outliers=n_outliers), progress=False)
    return model, ref


def test_outlier_channels_matter_sqnr():
    x, _ = outlier_activations(256, 1024, n_outlier_channels=8, seed=1)
    xe, _ = outlier_activations(64, 1024, n_outlier_channels=8, seed=1)  # same channels
    xe = xe + 0.1 * torch.randn_like(xe)  # new tokens
    results = {}
    for n_out in (0, 128):
        model, ref = _calibrated_linear(1024, 512, n_out, x)
        with torch.no_grad():
            results[n_out] = sqnr(ref(xe), model(xe))
    print(f"SQNR dB: n_outliers=0 {results[0]:.2f}, n_outliers=128 {results[128]:.2f}")
    assert results[128] > 15.0
    assert results[128] > results[0] + 6.0  # outliers in INT8: at least 4x less error power


def test_dequantize_matches_weight():
    w = torch.randn(64, 320) * 0.02
    w[:, 5] *= 40  # an outlier column
    perm = outlier_permutation(data_free_channel_score(w), 64)
    assert 5 in perm[-64:].tolist()
    t = AtomQuantTensor.from_hp(w, perm, n_outliers=64, group_size=128, weight_clip_ratio=1.0)
    assert t.shape == (64, 320) and t.dtype == torch.float32
    assert sqnr(w, t.dequantize()) > 17.0
    # columns kept in INT8 are nearly exact
    outl = perm[-64:].long()
    assert sqnr(w[:, outl], t.dequantize()[:, outl]) > 30.0


def test_repr_and_tensor_ops():
    lin = torch.nn.Linear(256, 96)
    quantize_(lin, atom_config(n_outliers=32))
    w = lin.weight
    assert "AtomQuantTensor(shape=(96, 256)" in repr(w) and "n_outliers=32" in repr(w)
    for other in (w.detach(), w.clone()):
        assert isinstance(other, AtomQuantTensor)
        assert torch.equal(other.qdata, w.qdata) and torch.equal(other.perm, w.perm)
    half = w.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half.qdata, w.qdata)
    rows = w[16:48]
    assert isinstance(rows, AtomQuantTensor) and rows.shape == (32, 256)
    assert torch.equal(rows.dequantize(), w.dequantize()[16:48])
    with pytest.raises(NotImplementedError, match="output dim"):
        w[:, :128]


def _two_weights(perms):
    model = torch.nn.ModuleDict({"q": torch.nn.Linear(256, 64, bias=False), "k": torch.nn.Linear(256, 32, bias=False)})
    quantize_with_permutations(model.values(), perms)
    return model


@pytest.mark.parametrize("unwrapped", [False, True])
@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_moving_a_model_keeps_shared_permutations_shared(device, unwrapped):
    """``model.to(device)`` moves each weight on its own; weights that shared one permutation
    tensor share its one copy after the move (the Inductor pass quantizes an activation once
    per permutation tensor), and weights with different permutations keep their own."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    p, other = two_permutations()
    shared, separate = _two_weights([p, p]), _two_weights([p, other])
    if unwrapped:
        atom_ao.unwrap_weights(shared)
        atom_ao.unwrap_weights(separate)
    shared.to(device)
    separate.to(device)
    storage = lambda m: m.weight.perm.untyped_storage()._cdata  # noqa: E731  (a Parameter holds views)
    assert shared.q.weight.perm.device.type == device
    assert storage(shared.q) == storage(shared.k)
    assert storage(separate.q) != storage(separate.k)
    shared.to(torch.bfloat16)  # a dtype change leaves the permutations alone
    assert storage(shared.q) == storage(shared.k) and shared.q.weight.dtype == torch.bfloat16
    if device == "cuda":
        assert torch.equal(separate.k.weight.perm.cpu(), other)


def test_flatten_matches_torchao_generic_form_and_round_trips():
    from torchao.utils import TorchAOBaseTensor

    lin = torch.nn.Linear(256, 96)
    quantize_(lin, atom_config(n_outliers=32))
    w = lin.weight.to(torch.bfloat16)
    names, meta = w.__tensor_flatten__()
    assert (names, meta) == TorchAOBaseTensor.__tensor_flatten__(w)
    names.append("x")  # a caller's list is its own
    assert w.__tensor_flatten__()[0] == AtomQuantTensor.tensor_data_names
    back = AtomQuantTensor.__tensor_unflatten__({n: getattr(w, n) for n in AtomQuantTensor.tensor_data_names},
                                                meta, w.shape, w.stride())
    assert back.dtype == torch.bfloat16 and back.group_size == w.group_size
    assert torch.equal(back.dequantize(), w.dequantize())
    t = w.t()  # the transposed view flattens the same way
    assert t.__tensor_flatten__() == TorchAOBaseTensor.__tensor_flatten__(t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(7,), (2, 5)])
def test_linear_dtypes_bias_and_ranks(dtype, bias, shape):
    x, _ = outlier_activations(64, 384, seed=3)
    model, ref = _calibrated_linear(384, 128, 128, x, bias=bias)
    model, ref = model.to(dtype), ref.to(dtype)
    xe = torch.randn(*shape, 384).to(dtype)
    with torch.no_grad():
        y = model(xe)
        r = ref(xe)
    assert y.dtype == dtype and y.shape == (*shape, 128)
    assert sqnr(r, y) > 12.0


def test_non_contiguous_input():
    lin = torch.nn.Linear(256, 64)
    quantize_(lin, atom_config(n_outliers=32))
    x = torch.randn(256, 6).t()  # (6, 256), strided
    assert not x.is_contiguous()
    with torch.no_grad():
        assert torch.equal(lin(x), lin(x.contiguous()))


def test_zero_nan_inf_and_huge_rows():
    lin = torch.nn.Linear(256, 64)
    quantize_(lin, atom_config(n_outliers=32))
    x = torch.randn(5, 256, dtype=torch.float16)
    x[0] = 0.0  # zero row: defined, equals the bias
    x[1, 7] = float("nan")  # NaN in -> NaN out for that token
    x[2, 9] = float("inf")  # inf in -> not finite out for that token
    x[3, 11] = 60000.0  # huge outlier: finite out
    with torch.no_grad():
        y = lin(x)
    torch.testing.assert_close(y[0], lin.bias.to(y.dtype))
    assert y[1].isnan().all()
    assert not y[2].isfinite().all()
    assert y[3].isfinite().all() and y[4].isfinite().all()


def test_bad_inputs_raise_clear_errors():
    lin = torch.nn.Linear(256, 64)
    quantize_(lin, atom_config(n_outliers=32))
    with pytest.raises(ValueError, match="input has 128 features, weight expects 256"):
        lin(torch.randn(3, 128))
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        torch.nn.functional.linear(torch.ones(3, 256, dtype=torch.int32), lin.weight)
    with pytest.raises(ValueError, match="2-D floating"):
        AtomQuantTensor.from_hp(torch.randn(4, 4, 4), torch.arange(4, dtype=torch.int32))


def _cuda_linear(k=512, n=384, bias=True):
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=bias, device="cuda", dtype=torch.bfloat16)
    quantize_(lin, atom_config(weight_clip_ratio=1.0))
    return lin


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
def test_eager_direct_launch_equals_op_path(m, monkeypatch):
    """Eager linears launch the Triton kernels directly (no custom-op dispatch); the result must
    be bit-identical to the torch.ops path, which the flag forces."""
    import atom_ao.tensor as t

    lin = _cuda_linear()
    x = outlier_activations(m, 512, dtype=torch.bfloat16)[0].cuda()
    with torch.no_grad():
        assert t._direct_launch_ok(x, lin.bias)
        y_direct = lin(x)
        monkeypatch.setattr(t, "EAGER_DIRECT_LAUNCH", False)
        y_ops = lin(x)
    assert torch.equal(y_direct, y_ops)


@pytest.mark.gpu
def test_direct_launch_steps_aside_for_profiler_autograd_and_fake():
    import atom_ao.tensor as t
    from torch._subclasses.fake_tensor import FakeTensorMode

    lin = _cuda_linear()
    x = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    assert not t._direct_launch_ok(x.requires_grad_(), None)  # grad mode on, input needs grad
    x = x.detach()
    with torch.profiler.profile() as prof, torch.no_grad():
        lin(x)
    names = {e.name for e in prof.events()}
    assert "atom_ao::quantize_activation" in names and "atom_ao::w4a4_gemm" in names
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx = mode.from_tensor(x)
        assert not t._direct_launch_ok(fx, None)


@pytest.mark.gpu
def test_compiled_split_k_sum_fuses_into_the_consumer():
    """At M = 1 the GEMM splits K; compiled, the partials' sum is left to Inductor, which fuses it
    into the residual add: no summing kernel in the generated code, same values as eager (up to
    the order of float32 adds, which is the same: one bf16 rounding either way)."""
    from torch._inductor.utils import run_and_get_code
    from torch.testing import FileCheck

    from atom_ao.ops.w4a4_gemm import default_path

    lin = _cuda_linear(k=4096, n=4096)  # few row tiles at M = 1: both M = 1 kernels split K
    x = outlier_activations(1, 4096, dtype=torch.bfloat16)[0].cuda()
    res = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    f = lambda x, r: lin(x) + r  # noqa: E731
    with torch.no_grad():
        eager = f(x, res)
        torch._dynamo.reset()
        compiled, codes = run_and_get_code(torch.compile(f, fullgraph=True), x, res)
    code = "\n".join(codes)
    FileCheck().check("_w4a4_gemv_kernel" if default_path(1) == "gemv" else "_w4a4_gemm_swap_kernel").run(code)
    assert "_sum_splits_kernel" not in code
    # no weight cloned and copied back: Inductor saw the GEMM write only its output
    # (tests/ops/test_kernel_writes.py checks the analysis for every kernel on CPU)
    assert "aten.clone.default" not in code and "aten.copy_.default" not in code
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-2 * eager.abs().max().item())

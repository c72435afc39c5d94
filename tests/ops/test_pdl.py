"""atom_ao.ops.pdl: when a launch takes programmatic dependent launch, what it passes to Triton,
and the Inductor hook that gives kernels traced with PDL=True the launch attribute; on the GPU,
a compiled one-token linear with it on (and Inductor's own PDL: the split-K sum after the gemv)
gives the same bits as with it off."""

import pytest
import torch

from atom_ao.ops import pdl


def test_no_pdl_off_hopper_or_off_cuda(monkeypatch):
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert not pdl.wanted(torch.zeros(1), None)  # CPU
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert not pdl.wanted(torch.zeros(1), None)


def test_launch_kwargs_eager_only():
    t = torch.zeros(2)
    assert pdl.launch_kwargs(True, t) == {"launch_pdl": True}
    assert pdl.launch_kwargs(False, t) == {}
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(t)
        assert pdl.launch_kwargs(True, fake) == {}  # traced: Inductor's launcher takes it from triton_meta


def test_meta_and_hook(monkeypatch):
    from torch._inductor.runtime import triton_heuristics

    seen = []
    monkeypatch.setattr(triton_heuristics, "user_autotune", lambda *a, **k: seen.append((a, k)))
    monkeypatch.setattr(pdl, "_hooked", False)
    pdl.install_inductor_hook()
    pdl.install_inductor_hook()  # once only
    triton_heuristics.user_autotune(configs=[], triton_meta={"constants": {"PDL": True, "X": 1}})
    triton_heuristics.user_autotune(configs=[], triton_meta={"constants": {"PDL": False}})
    triton_heuristics.user_autotune([], {"constants": {"PDL": True}})
    assert seen[0][1]["triton_meta"]["launch_pdl"] is True
    assert "launch_pdl" not in seen[1][1]["triton_meta"]
    assert seen[2][0][1]["launch_pdl"] is True
    assert pdl.pdl_meta({}) == {} and pdl.pdl_meta({"constants": {}}) == {"constants": {}}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs an sm90+ GPU")
def test_compiled_one_token_linear_same_bits_gpu(monkeypatch):
    import torch._inductor.config  # noqa: F401  (torch._inductor.config below)

    import atom_ao
    from torch._inductor.utils import run_and_get_code
    from torch.testing import FileCheck
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    lin = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    quantize_(lin, atom_ao.atom_config())
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    x[:, :8] *= 60
    outs = {}
    for on in (False, True):
        monkeypatch.setattr(pdl, "ENABLED", on)
        if hasattr(torch._inductor.config.triton, "enable_pdl"):  # Inductor's own kernels too (the split sum)
            monkeypatch.setattr(torch._inductor.config.triton, "enable_pdl", on)
        monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
        torch._dynamo.reset()
        f = torch.compile(lin)
        out, (code, *_) = run_and_get_code(f, x)
        FileCheck().check("_w4a4_gemv_kernel").check("'PDL': True" if on else "'PDL': False").run(code)
        outs[on] = out
    assert torch.equal(outs[True], outs[False])

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


class OnHopper:
    """Stands for a tensor on an sm90 GPU (with ``on_hopper``)."""
    device = torch.device("cuda", 0)


@pytest.fixture
def on_hopper(monkeypatch):
    monkeypatch.setattr(pdl, "_INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (9, 0))
    monkeypatch.setattr(pdl, "install_inductor_hook", lambda: None)
    monkeypatch.setattr(torch.version, "hip", None)


def test_no_pdl_in_graphs_whose_analysis_cannot_read_the_waits(monkeypatch, on_hopper):
    # else Inductor would copy weights around the kernels and the early weight loads race them
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(pdl, "_analysis_reads_waits", False)
    with pytest.warns(UserWarning, match="without PDL"):
        assert not pdl.wanted(OnHopper(), True)
    monkeypatch.setattr(pdl, "_analysis_reads_waits", True)
    assert pdl.wanted(OnHopper(), True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(pdl, "_analysis_reads_waits", False)
    assert pdl.wanted(OnHopper(), True)  # eager: no Inductor analysis involved


def test_auto_takes_the_one_token_launches_only(monkeypatch, on_hopper):
    # the default: a batch-1 decode step's launches (the configuration timed and checked)
    monkeypatch.setattr(pdl, "ENABLED", pdl.AUTO)
    assert pdl.wanted(OnHopper(), None, one_token=True)
    assert not pdl.wanted(OnHopper(), None, one_token=False)
    assert not pdl.wanted(OnHopper(), False, one_token=True)  # an explicit answer wins
    assert pdl.wanted(OnHopper(), True, one_token=False)
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.wanted(OnHopper(), None, one_token=False)
    monkeypatch.setattr(torch.version, "hip", "6.2")  # AMD: no griddepcontrol
    assert not pdl.wanted(OnHopper(), None, one_token=True)
    monkeypatch.setattr(torch.version, "hip", None)
    # a torch whose analysis cannot read the waits: AUTO falls back quietly, an explicit ask warns
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(pdl, "_analysis_reads_waits", False)
    monkeypatch.setattr(pdl, "ENABLED", pdl.AUTO)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not pdl.wanted(OnHopper(), None, one_token=True)


def test_enable_takes_true_false_or_auto(monkeypatch):
    monkeypatch.setattr(pdl, "ENABLED", pdl.ENABLED)
    monkeypatch.setattr(pdl, "install_inductor_hook", lambda: None)
    for on in (True, False, pdl.AUTO):
        pdl.enable(on)
        assert pdl.ENABLED is on
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        pdl.enable("yes")


def test_default_switch_is_auto_without_workers_pinned():
    import os

    if "ATOM_AO_PDL" not in os.environ:
        assert pdl.ENABLED == pdl.AUTO
    if "ATOM_AO_PDL_IN_PROCESS" not in os.environ:
        assert not pdl.IN_PROCESS  # Inductor's compile workers stay on


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
    from torch._higher_order_ops import triton_kernel_wrap as tkw
    monkeypatch.setattr(tkw, "ttir_to_functions", tkw.ttir_to_functions)
    monkeypatch.setattr(pdl, "_analysis_reads_waits", False)
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config, "compile_threads", inductor_config.compile_threads)
    from torch._inductor.codegen.wrapper import PythonWrapperCodegen
    monkeypatch.setattr(PythonWrapperCodegen, "define_kernel", PythonWrapperCodegen.define_kernel)
    monkeypatch.setattr(pdl, "MARKED", [])
    monkeypatch.setattr(pdl, "IN_PROCESS", True)
    pdl.install_inductor_hook()
    assert inductor_config.compile_threads == 1  # compile workers would build the kernels unwrapped
    pdl.install_inductor_hook()  # once only
    triton_heuristics.user_autotune(configs=[], triton_meta={"constants": {"PDL": True, "X": 1}},
                                    inductor_meta={"kernel_name": "k_0"})
    triton_heuristics.user_autotune(configs=[], triton_meta={"constants": {"PDL": False}})
    triton_heuristics.user_autotune([], {"constants": {"PDL": True}}, inductor_meta={"kernel_name": "k_1"})
    triton_heuristics.user_autotune([], {"constants": {"PDL": True}}, inductor_meta={"kernel_name": "k_1"})
    assert seen[0][1]["triton_meta"]["launch_pdl"] is True
    assert pdl.MARKED == ["k_0", "k_1"]  # each kernel once
    assert "launch_pdl" not in seen[1][1]["triton_meta"]
    assert seen[2][0][1]["launch_pdl"] is True
    assert pdl.pdl_meta({}) == {} and pdl.pdl_meta({"constants": {}}) == {"constants": {}}
    assert tkw.ttir_to_functions._atom_ao_pdl and pdl._analysis_reads_waits  # Inductor's analysis reads the waits


# a user Triton kernel's source as Inductor's wrapper codegen hands it to define_kernel
_USER_KERNEL_SRC = """async_compile.triton('_w4a4_gemv_kernel_0', '''
import triton
from torch._inductor.runtime import triton_helpers, triton_heuristics

@triton_heuristics.user_autotune(
    configs=[{'num_warps': 4, 'num_stages': 1}],
    inductor_meta={'kernel_name': '_w4a4_gemv_kernel_0'},
    triton_meta={'signature': {'a_ptr': '*i32'}, 'constants': {'WORDS': 16, 'PDL': %s}, 'configs': []},
    filename=__file__,
    custom_kernel=True,
)
@triton.jit
def _w4a4_gemv_kernel_0(a_ptr, WORDS: tl.constexpr, PDL: tl.constexpr):
    pass
''', device_str='cuda')"""


def test_with_launch_pdl_marks_the_source_of_pdl_kernels_only():
    on, off = _USER_KERNEL_SRC % "True", _USER_KERNEL_SRC % "False"
    got = pdl.with_launch_pdl(on)
    assert "triton_meta={'launch_pdl': True, 'signature'" in got and got.count("launch_pdl") == 1
    assert pdl.with_launch_pdl(got) == got  # once
    assert pdl.with_launch_pdl(off) is off
    inductors = "@triton_heuristics.pointwise(triton_meta={'constants': {}})\n@triton.jit\ndef k(): pass"
    assert pdl.with_launch_pdl(inductors) is inductors


def test_hook_patches_the_kernel_sources_inductor_defines(monkeypatch):
    from torch._inductor.codegen.wrapper import PythonWrapperCodegen
    import torch._inductor.config as inductor_config

    seen = []
    monkeypatch.setattr(PythonWrapperCodegen, "define_kernel", lambda self, name, body, *a, **k: seen.append(body))
    monkeypatch.setattr(pdl, "_hooked", False)
    monkeypatch.setattr(pdl, "IN_PROCESS", False)  # compile workers left alone: the source carries the attribute
    monkeypatch.setattr(inductor_config, "compile_threads", 7)
    monkeypatch.setattr(pdl, "MARKED", [])
    from torch._inductor.runtime import triton_heuristics
    monkeypatch.setattr(triton_heuristics, "user_autotune", triton_heuristics.user_autotune)
    from torch._higher_order_ops import triton_kernel_wrap as tkw
    monkeypatch.setattr(tkw, "ttir_to_functions", tkw.ttir_to_functions)
    pdl.install_inductor_hook()
    assert inductor_config.compile_threads == 7
    PythonWrapperCodegen.define_kernel(None, "_w4a4_gemv_kernel_0", _USER_KERNEL_SRC % "True")
    PythonWrapperCodegen.define_kernel(None, "_w4a4_gemv_kernel_1", _USER_KERNEL_SRC % "False", "# meta")
    assert "'launch_pdl': True" in seen[0] and "launch_pdl" not in seen[1]
    assert pdl.MARKED == ["_w4a4_gemv_kernel_0"]


def test_operandless_asm_is_pure():
    from torch._higher_order_ops.triton_kernel_wrap import Intermediate, Op, Param

    wait = Op("tt.elementwise_inline_asm", None, [], Intermediate(0))
    dp4a = Op("tt.elementwise_inline_asm", None, [Param(0)], Intermediate(1))
    store = Op("tt.store", None, [Param(1), Intermediate(1)], Intermediate(-2))
    got = pdl.operandless_asm_is_pure({"k": {Intermediate(0): [wait], Intermediate(1): [dp4a], Intermediate(-2): [store]}})
    assert got["k"][Intermediate(0)][0].is_pure  # no operands: can address no argument
    assert not got["k"][Intermediate(1)][0].is_pure  # may write through its operand: left alone
    assert got["k"][Intermediate(-2)][0] is store


def _scripts_on_path() -> None:
    """benchmarks/ and scripts/ importable (pdl_same_bits, common, bench_generate)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for d in (str(root / "scripts"), str(root / "benchmarks")):
        if d not in sys.path:
            sys.path.insert(0, d)


def _switch(monkeypatch, on) -> None:
    """atom_ao's PDL (True, False or AUTO) and Inductor's own when ours is True (the kernels
    around ours, e.g. the split-K sum): scripts/pdl_same_bits.set_pdl, undone after the test."""
    _scripts_on_path()
    from pdl_same_bits import set_pdl

    set_pdl(on, on is True, monkeypatch.setattr)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs an sm90+ GPU")
def test_compiled_one_token_linear_same_bits_gpu(monkeypatch):
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
        _switch(monkeypatch, on)
        torch._dynamo.reset()
        f = torch.compile(lin)
        out, (code, *_) = run_and_get_code(f, x)
        FileCheck().check("_w4a4_gemv_kernel").check("'PDL': True" if on else "'PDL': False").run(code)
        outs[on] = out
    assert any("_w4a4_gemv_kernel" in name for name in pdl.MARKED)  # launched with the attribute
    assert torch.equal(outs[True], outs[False])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="needs an sm90+ GPU")
@torch.no_grad()
def test_compiled_model_decode_same_bits_gpu(monkeypatch):
    # bench_generate's model (Atom W4A4 + INT4 KV, compiled block, batch 1: quantizer, gemv, KV
    # write, decode attention and its reduce all PDL-launched, Inductor's kernels too) against
    # the same model with PDL off: the same logits at every decode step
    _scripts_on_path()
    from common import pin_autotuning
    from pdl_same_bits import decode_logits

    # each build would time its autotuned kernels' configs (a PDL=True kernel is tuned apart from
    # its PDL=False twin) and might pick a tiling whose float sums round otherwise
    pin_autotuning(monkeypatch.setattr)
    logits = {}
    for on in (False, True, pdl.AUTO):  # AUTO: the default, atom_ao's decode launches only
        _switch(monkeypatch, on)
        monkeypatch.setattr(pdl, "MARKED", [])
        logits[on] = decode_logits()
        assert bool(pdl.MARKED) == bool(on)  # the compiled decode kernels got the launch attribute
    assert logits[False].abs().max() > 0
    assert torch.equal(logits[True], logits[False])
    assert torch.equal(logits[pdl.AUTO], logits[False])

"""atom_ao.inductor.prefetch: each one-token gemv launch asks the next one's weights into L2.

The pass reads and rewrites traced Triton launches. On CPU the op runs its reference, so the
launches are traced here as torch.compile traces the op's CUDA body (make_fx of the launcher,
without the interpreter, in a subprocess); the GPU test compiles real linears and compares bits.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

_SCRIPT = """
import sys, torch
sys.path[:0] = [{tests!r}, {ops!r}]
from test_w4a4_gemm_triton import _operands
from atom_ao.ops import w4a4_gemv
from atom_ao.ops.w4a4_gemm import w4a4_gemm_triton
from atom_ao.inductor import prefetch
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch.fx.experimental.proxy_tensor import make_fx

w4a4_gemv.GEMV_PREFETCH_MB = float(sys.argv[1])
ops = [_operands(1, 64 * (i + 1), 512, 32, 128, torch.bfloat16, False, seed=i, device="cpu") for i in range(3)]
flat = [t for op in ops for t in op[:8]]

def three(*t):
    return [w4a4_gemm_triton(*t[8 * i:8 * i + 8], None, 128, torch.bfloat16, splits=1, path="gemv") for i in range(3)]

gm = make_fx(three, tracing_mode="fake")(*flat)
launches = prefetch.gemv_launches(gm.graph)
# the first launch as torch.compile keeps it: its constants in Inductor's side table
first = launches[0]
kw = dict(first.kwargs["kwargs"])
consts = {{k: kw.pop(k) for k in list(kw) if not isinstance(kw[k], torch.fx.Node)}}
first.kwargs = {{**first.kwargs, "kwargs": kw, "constant_args_idx": kernel_side_table.add_constant_args(consts)}}
print("links", prefetch.link_gemvs(gm.graph), "again", prefetch.link_gemvs(gm.graph))
gm.graph.lint()  # every node after its inputs
order = {{n: i for i, n in enumerate(gm.graph.nodes)}}
def root(n):
    while n.op == "call_function":
        n = n.args[0]
    return n.name
for i, n in enumerate(launches):
    a = prefetch.launch_args(n)
    pf = a["pf_ptr"]
    print(i, "pf", root(pf), "own", root(a["w_ptr"]), "PF", a["PF"], "lines", a["PF_LINES"],
          "before", order[pf] < order[n], "in_side_table", "PF" not in n.kwargs["kwargs"])
"""


def _run(mb: float) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # trace the CUDA body's launches
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    script = _SCRIPT.format(tests=str(HERE.parent), ops=str(HERE.parent / "ops"))
    res = subprocess.run([sys.executable, "-c", script, str(mb)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [ln for ln in res.stdout.splitlines() if ln.startswith(("links", "0 ", "1 ", "2 "))]


def test_each_gemv_gets_the_next_weights():
    # weights (64 / 128 / 192 rows x 256 bytes) are graph inputs arg4 / arg12 / arg20; the last
    # launch has no next; linking again adds nothing; a launch with its constants in Inductor's
    # side table (the first) is rewritten there
    lines = _run(24)
    assert lines == [
        "links 2 again 0",
        "0 pf arg12_1 own arg4_1 PF 2 lines 256 before True in_side_table True",
        "1 pf arg20_1 own arg12_1 PF 2 lines 384 before True in_side_table False",
        "2 pf arg20_1 own arg20_1 PF 0 lines 0 before True in_side_table False",
    ]


def test_prefetch_size_is_capped_and_zero_turns_it_off():
    assert _run(0.01)[1:3] == [  # 0.01 MB: 81 lines of 128 bytes
        "0 pf arg12_1 own arg4_1 PF 2 lines 81 before True in_side_table True",
        "1 pf arg20_1 own arg12_1 PF 2 lines 81 before True in_side_table False",
    ]
    assert _run(0)[0] == "links 0 again 0"


@pytest.mark.gpu
def test_compiled_linears_same_bits_with_prefetch_gpu(monkeypatch):
    # three chained Atom linears at one token, compiled with and without the links: the generated
    # code launches two gemvs with a prefetch, and the output is the same to the bit
    import atom_ao
    from atom_ao.inductor import prefetch
    from torch._inductor.utils import run_and_get_code
    from torch.testing import FileCheck
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(1024, 1024, bias=False) for _ in range(3))).cuda().bfloat16()
    quantize_(model, atom_ao.atom_config())
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    x[:, :4] *= 60
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    outs = {}
    for on in (False, True):
        monkeypatch.setattr(prefetch, "ENABLED", on)
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(model), x)
        outs[on] = out
        src = "\n".join(code)
        assert src.count("'PF': 2") == (2 if on else 0), src[:3000]
    assert outs[False].abs().max() > 0
    assert torch.equal(outs[True], outs[False])
    FileCheck().check("_w4a4_gemv_kernel").run(src)

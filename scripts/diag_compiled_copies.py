"""Print what a compiled quantized linear (M = 1 and 64) and one gpt block decode step launch,
flagging copies: a weight treated as mutated shows up as clone / copy_ kernels in the code."""
import logging
import re
import sys

import torch
import triton

logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.DEBUG)
print("torch", torch.__version__, torch.version.git_version, "triton", triton.__version__, "cuda", torch.version.cuda)
from torch._inductor.utils import run_and_get_code  # noqa: E402
from torchao.quantization import quantize_  # noqa: E402

from atom_ao import atom_config  # noqa: E402

for m in (1, 64):
    torch._dynamo.reset()
    lin = torch.nn.Linear(4096, 4096, device="cuda", dtype=torch.bfloat16)
    quantize_(lin, atom_config())
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        _, codes = run_and_get_code(torch.compile(lin, fullgraph=True), x)
    code = "\n".join(codes)
    calls = re.findall(r"^\s+(\w+)\.run\(|^\s+(\w+)\[.*\]\(|(aten\.\w+|extern_kernels\.\w+|torch\.ops\.\w+\.\w+)", code, re.M)
    print(f"--- M={m}: kernels launched:", sorted({c for t in calls for c in t if c}))
    for line in code.splitlines():
        if "copy_" in line or "clone" in line or "empty_strided" in line and "del" not in line:
            print("   ", line.strip()[:160])
if "--full" in sys.argv:
    print(code)

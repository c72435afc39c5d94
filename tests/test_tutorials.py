"""The tutorials run (so they cannot rot): each as a script, as a user would, on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


@pytest.mark.parametrize("script, expect", [
    ("fsdp2.py", "sharded forward == unsharded quantized forward: True"),
    ("tensor_parallel.py", "tensor-parallel logits vs unsharded quantized model: cosine"),
    ("mixed_configs.py", "compiled vs eager: cosine"),
    ("save_load.py", "torch.load(weights_only=True): AtomQuantTensor"),
    ("generate.py", ("same tokens as transformers' generate with the INT4 cache: True",
                     "generate(custom_generate=atom_ao.greedy_decoding) gives them too: True")),
])
def test_tutorial_runs(script, expect):
    # aot_eager: the inductor compile of mixed_configs.py is tested by test_fqn_config.py
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ATOM_AO_TUTORIAL_BACKEND": "aot_eager"}
    r = subprocess.run([sys.executable, str(TUTORIALS / script)], capture_output=True, text=True, timeout=240,
                       env=env, cwd=TUTORIALS.parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for line in (expect,) if isinstance(expect, str) else expect:
        assert line in r.stdout, r.stdout[-2000:]

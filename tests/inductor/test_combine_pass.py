"""atom_ao.inductor's combine fusion (``passes.fuse_combine``): the decode reduce kernel launch and
the quantizer reading its output become one ``atom_ao::combine_quantize``.

The graphs come from ``combine_graphs.py``, run in a process of its own (see there: the decode
attention decomposes into its launches only off the interpreter, and on CUDA tensors, fake
ones here); the pass runs on them as Inductor's post-grad pass would. The GPU test compiles a
decode step for real and compares its logits with the unfused build's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def found():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("combine_graphs.py"))], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("case", ["layer-1-32-32-1280", "layer-1-32-8-8192", "layer-4-8-2-4096"])
def test_reduce_and_quantizer_become_one_op(found, case):
    f = found[case]
    assert (f["reduces_before"], f["fused"], f["reduces_after"], f["quantizers_after"]) == (1, 1, 0, 0)
    assert f["inputs"] == ["part_ptr", "ml_ptr"]  # the split kernel's partials
    assert f["rest"] == ["128", "128", "0.9", "torch.bfloat16"]
    b, heads = (int(v) for v in case.split("-")[1:3])
    assert f["scales_shape"] == [b, heads - 1]  # (B, groups): heads x 128 channels, 128 of them outliers


def test_transformers_attention_views_are_fused(found):
    # atom_ao.kv.attention's decode output (out[:, None]) through a transformers layer's reshape
    f = found["transformers"]
    assert (f["reduces_before"], f["fused"], f["reduces_after"], f["quantizers_after"]) == (1, 1, 0, 0)


def test_one_split_has_nothing_to_fuse(found):
    assert found["layer-64-32-8-64"] == {"reduces_before": 0, "fused": 0, "reduces_after": 0, "quantizers_after": 1}


@pytest.mark.parametrize("case", ["also_read", "reordered"])
def test_not_fused_when_unsafe(found, case):
    # the output also read elsewhere, or views that reorder its channels: both launches stay
    assert found[case] == {"reduces_before": 1, "fused": 0, "reduces_after": 1, "quantizers_after": 1}


def test_run_fuses_only_when_switched_on(found):
    assert (found["run_off"]["fused"], found["run_off"]["reduces_after"]) == (0, 1)
    assert (found["run_on"]["fused"], found["run_on"]["reduces_after"]) == (1, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_compiled_decode_with_the_fusion_gpu(monkeypatch):
    # bench_generate's Atom + INT4 KV model (2 layers, GQA 8 / 2), prompt 300 (5 splits a decode
    # step): the decode graph gets one combine_quantize a layer in place of the reduce launch and
    # o_proj's quantizer, and its logits stay those of the unfused build up to the rare code flips
    # of a combine summed in another order
    import torch

    from atom_ao.inductor import passes
    from conftest import sqnr

    root = Path(__file__).resolve().parents[2]
    for d in (str(root / "scripts"), str(root / "benchmarks")):
        if d not in sys.path:
            sys.path.insert(0, d)
    from common import pin_autotuning
    from pdl_same_bits import decode_logits

    pin_autotuning(monkeypatch.setattr)
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)  # the pass runs in each build
    logits = {}
    for on in (False, True):
        monkeypatch.setattr(passes, "FUSE_COMBINE", on)
        torch._dynamo.reset()
        with torch.no_grad():
            logits[on] = decode_logits(prompt=300)
        assert passes.LAST_COUNTS.get("combine_quantize", 0) == (1 if on else 0)  # the decode graph's block
    assert logits[False].abs().max() > 0
    assert torch.equal(logits[True][0], logits[False][0])  # the prompt: no decode attention
    assert sqnr(logits[False], logits[True]) > 30

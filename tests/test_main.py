"""The main job end to end on a real model (SmolLM2-135M, real wiki text), at a tiny size."""

import json

import pytest
import torch

import atom_ao
from atom_ao import AtomQuantTensor, data
from atom_ao.__main__ import main


@pytest.mark.slow
def test_main_job_real_model(tmp_path):
    report = main(["--eval-windows", "1", "--seq-len", "256", "--calib-samples", "2", "--calib-seq-len", "128",
                   "--new-tokens", "8", "--out", str(tmp_path), "--device", "cpu"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == report
    # SmolLM2 on 4 x 1024 tokens: float 22.5, Atom 30.3 (README); one short window is noisier
    assert 5 < report["ppl_fp"] < 60
    assert report["ppl_fp"] < report["ppl_atom"] < 2 * report["ppl_fp"]
    assert report["ppl_fp"] < report["ppl_atom_kv4"] < 2 * report["ppl_fp"]  # W4A4 + the INT4 KV cache
    assert report["sample_atom"].strip() and report["sample_atom_kv4"].strip()

    # the checkpoint loads into a fresh float model, no calibration, and gives the same logits
    model, tok = data.load_model("smollm2-135m")
    atom_ao.load_quantized(model, str(tmp_path / "model.safetensors"))
    assert isinstance(model.model.layers[3].mlp.down_proj.weight, AtomQuantTensor)
    assert not isinstance(model.lm_head.weight, AtomQuantTensor)
    ids = tok("The capital of France", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.isfinite().all()


@pytest.mark.parametrize("kv4", [False, True])
def test_main_job_static_cache_generate_matches_the_growing_one(kv4):
    """The GPU tokens/s of the main job decode with static caches (which transformers compiles);
    on CPU the same calls run eagerly and must produce the growing cache's tokens."""
    from atom_ao.__main__ import _generate
    from test_handler import tiny_llama

    model = tiny_llama(layers=1)
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    kw = dict(do_sample=False, max_new_tokens=5, min_new_tokens=5)
    with torch.no_grad():
        growing = _generate(model, ids, kv4, **kw)
        static = _generate(model, ids, kv4, max_cache_len=ids.shape[1] + 5, **kw)
    assert torch.equal(static, growing)
    assert model.config._attn_implementation != "atom_int4"  # the INT4 cache's attention switched back


@pytest.mark.parametrize("kv4", [False, True])
def test_main_job_atom_loop_tokens_per_s(kv4):
    """The main job's second GPU speed figure: generate with atom_ao's loop as custom_generate, timed
    as the difference of two lengths (here eager on the CPU: the same calls, no compile)."""
    from atom_ao.__main__ import _atom_loop_tokens_per_s
    from test_handler import tiny_llama

    model = tiny_llama(layers=1)
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    rate = _atom_loop_tokens_per_s(model, ids, kv4, short=2, long=12, compile=False)
    assert 0 < rate < float("inf")
    assert model.config._attn_implementation != "atom_int4"  # the INT4 cache's attention switched back


@pytest.mark.parametrize("loops", ["", "atom_ao,hf", "generate;atom_ao"])
def test_main_job_refuses_unknown_speed_loops(loops, capsys):
    with pytest.raises(SystemExit):
        main(["--speed-loops", loops, "--device", "cpu"])
    assert "--speed-loops" in capsys.readouterr().err

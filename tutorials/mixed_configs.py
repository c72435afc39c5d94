"""Tutorial: Atom on some layers, torchao's own configs on others, in one model, compiled.

``FqnToConfig`` maps module names (exact, or ``re:`` regular expressions) to configs. Here the
decoder's linears get Atom W4A4 and the output head torchao's INT8 dynamic quantization (on a
GPU, ``Float8DynamicActivationFloat8WeightConfig`` is the usual choice for it). Key Atom by the
module's name, not ``<module>.weight``: Atom quantizes the whole linear (its input permutation
included). torchao 0.18's ``quantize_`` needs ``filter_fn=None`` with an ``FqnToConfig``.

    python tutorials/mixed_configs.py
"""

import os

import torch
from torchao.quantization import FqnToConfig, Int8DynamicActivationInt8WeightConfig, quantize_

from _common import tiny_llama
from atom_ao import atom_config

model = tiny_llama(layers=1)
ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
quantize_(model, FqnToConfig({
    r"re:model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj": atom_config(n_outliers=64),
    "lm_head": Int8DynamicActivationInt8WeightConfig(),
    # "model.layers.0.self_attn.q_proj": None,   # an exact key wins: this one would stay float
}), filter_fn=None)
for name, m in model.named_modules():
    if isinstance(m, torch.nn.Linear) and name.endswith(("q_proj", "down_proj", "lm_head")):
        print(f"{name:32s} {type(m.weight).__name__}")

with torch.no_grad():
    eager = model(ids).logits
    # (tests/test_tutorials.py sets ATOM_AO_TUTORIAL_BACKEND=aot_eager to save the inductor compile
    # time on CI; tests/test_fqn_config.py compiles the same mix with inductor)
    backend = os.environ.get("ATOM_AO_TUTORIAL_BACKEND", "inductor")
    compiled = torch.compile(model, fullgraph=True, backend=backend)(ids).logits  # no graph breaks
cos = torch.nn.functional.cosine_similarity(compiled.flatten(), eager.flatten(), dim=0).item()
print(f"compiled vs eager: cosine {cos:.6f}, max |diff| {(compiled - eager).abs().max().item():.2e}")
assert cos > 0.9999

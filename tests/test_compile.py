"""torch.compile(fullgraph=True) of a quantized transformers Llama on CPU matches eager."""

import torch

import atom_ao
from atom_ao import atom_config
from test_handler import tiny_llama


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = tiny_llama(hidden=128, layers=1)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    atom_ao.quantize_calibrated(model, ids, atom_config(n_outliers=32), progress=False)
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, fullgraph=True)(ids).logits
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)

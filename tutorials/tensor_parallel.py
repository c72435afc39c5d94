"""Tutorial: tensor parallelism (DTensor) of an Atom-quantized Llama, 2 CPU processes over gloo.

``AtomColwiseParallel`` / ``AtomRowwiseParallel`` replace torch's ``ColwiseParallel`` /
``RowwiseParallel`` in the usual Megatron plan: q/k/v and gate/up column-wise (``Shard(0)``: a
block of output rows of every packed tensor, permutation replicated), o_proj and down_proj
row-wise (``Shard(1)``). Row-wise sharding cuts the weight's *permuted* K into blocks of whole
INT4 groups, the INT8 outlier block entirely on the last rank (see ``atom_ao.distributed``).
``fold_mlp_permutations`` makes down_proj's permutation the identity, so its input needs no
extra communication; o_proj's input is all-gathered and permuted first.

    python tutorials/tensor_parallel.py
"""

import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module
from torchao.quantization import quantize_

from _common import not_lm_head, spawn, tiny_llama
from atom_ao import atom_config
from atom_ao.distributed import AtomColwiseParallel, AtomRowwiseParallel
from atom_ao.fold import fold_mlp_permutations

PLAN = {
    "self_attn.q_proj": AtomColwiseParallel(), "self_attn.k_proj": AtomColwiseParallel(),
    "self_attn.v_proj": AtomColwiseParallel(), "self_attn.o_proj": AtomRowwiseParallel(),
    "mlp.gate_proj": AtomColwiseParallel(), "mlp.up_proj": AtomColwiseParallel(),
    "mlp.down_proj": AtomRowwiseParallel(),
}


def main(rank: int, world: int):
    mesh = init_device_mesh("cpu", (world,))
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))

    model = tiny_llama()
    # group_size 32: row-wise cuts of K=256 / K=512 over 2 ranks fall on group boundaries
    quantize_(model, atom_config(n_outliers=32, group_size=32), filter_fn=not_lm_head)
    fold_mlp_permutations(model)  # exact: down_proj's permutation moves into gate/up's rows
    with torch.no_grad():
        reference = model(ids).logits

    for layer in model.model.layers:  # src_data_rank=0 (default): rank 0's packed weights are the truth
        parallelize_module(layer, mesh, PLAN)
    attn = model.model.layers[0].self_attn
    if rank == 0:
        for name in ("q_proj", "o_proj"):
            w = getattr(attn, name).weight
            print(f"{name}: {w.placements[0]}, local {tuple(w.to_local().shape)} of {tuple(w.shape)}, "
                  f"outliers on this rank: {w.to_local().n_outliers}")
    with torch.no_grad():
        out = model(ids).logits
    # column-wise layers are bit-identical; a row-wise layer's all-reduce sums partial products
    # of whole groups in another order (~1e-6 relative), which can flip a later INT4 rounding
    cos = F.cosine_similarity(out.flatten(), reference.flatten(), dim=0).item()
    assert cos > 0.999, cos
    if rank == 0:
        print(f"tensor-parallel logits vs unsharded quantized model: cosine {cos:.6f}, "
              f"max |diff| {(out - reference).abs().max().item():.2e} (max |logit| {reference.abs().max().item():.2f})")


if __name__ == "__main__":
    spawn(main)

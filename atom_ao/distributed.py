"""Atom-quantized models under FSDP2 and DTensor tensor parallelism.

FSDP2 (``torch.distributed.fsdp.fully_shard``)
    Quantize first, then shard. ``AtomQuantTensor`` implements FSDP2's all-gather extension
    (``fsdp_pre_all_gather`` / ``fsdp_post_all_gather`` in ``atom_ao.tensor``): each rank holds
    a contiguous block of output rows of every per-row tensor (packed INT4, group scales, INT8
    outliers, outlier scales); the forward all-gathers those packed tensors, never a
    dequantized weight, and rebuilds the same ``AtomQuantTensor`` the unsharded model has, so the
    forward is bit-identical. The permutation is replicated (it belongs to the whole weight).
    ``all_gather_bytes`` / ``AllGatherCounter`` measure what goes over the wire: for a
    Llama-2-7B-shaped decoder layer 105.1 MB per forward vs 386.0 MB in bf16 (3.67x fewer;
    ``benchmarks/bench_fsdp.py``). The output dim must be divisible by the FSDP world size
    (FSDP2 would pad uneven shards, which a packed tensor cannot be): a clear error otherwise.

Tensor parallelism (``torch.distributed.tensor.parallel.parallelize_module``)
    ``AtomColwiseParallel`` / ``AtomRowwiseParallel`` are drop-in replacements for torch's
    ``ColwiseParallel`` / ``RowwiseParallel`` (same arguments; plain float linears get torch's
    behaviour). As with torch's styles, ``parallelize_module(..., src_data_rank=0)`` (the
    default) makes rank 0's weights the truth: its packed tensors are broadcast (DTensor's
    scatter cannot carry a tensor subclass), then each rank cuts its shard locally;
    ``src_data_rank=None`` skips the broadcast when every rank already holds the same model.

    * Column-wise, ``Shard(0)``: a block of output rows, as for FSDP2; the permutation is
      replicated; outputs are bit-identical to the unsharded layer's columns.
    * Row-wise, ``Shard(1)``: K cannot be cut in original channel order, since an INT4 group
      gathers channels from all over K (through the permutation) and the INT8 activation scale
      of a token spans the whole outlier block. So the row-sharded weight is the weight *in its
      permuted input order* (normal INT4 groups, then the outliers), cut into ``world``
      contiguous blocks of ``ceil(K / world)`` channels. Every block boundary must fall on an INT4
      group boundary inside the normal part (``shard_k_bounds`` checks it), so each rank holds
      whole groups and the last rank also holds the whole outlier block. The input is brought
      into the same permuted order before it is cut: when the permutation is the identity -- e.g.
      ``down_proj`` after ``atom_ao.fold.fold_mlp_permutations``, which reorders the rows of
      ``gate_proj`` / ``up_proj`` so their (column-sharded) outputs arrive already permuted -- the
      standard ``Shard(-1)`` input is used as it is, with no extra communication; otherwise
      (``o_proj``) the input is all-gathered, permuted and cut locally, an extra all-gather
      of the activation per layer. Each rank quantizes its block of the activation exactly as the
      unsharded layer quantizes those groups (and the outliers, all on the last rank), so the
      partial outputs summed by the all-reduce equal the unsharded output up to floating-point
      summation order (float32: ~1e-6 relative).

    A row-sharded weight's local tensor is a complete ``AtomQuantTensor`` over its block of
    permuted channels, with an identity permutation; ``DTensor.full_tensor()`` of it is not
    supported (the logical tensor is in permuted order).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from atom_ao.format import k_normal_padded
from atom_ao.tensor import AtomQuantTensor

__all__ = [
    "AtomColwiseParallel",
    "AtomRowwiseParallel",
    "shard_k_bounds",
    "shard_k",
    "all_gather_bytes",
    "AllGatherCounter",
]

_INPUT_PERM = "atom_tp_input_perm"
# torch >= 2.11 names the flat all-gather all_gather_single (all_gather_into_tensor is deprecated)
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# ---------------------------------------------------------------- FSDP2: bytes on the wire


def all_gather_bytes(weight: torch.Tensor) -> tuple[int, int]:
    """(bytes FSDP2 all-gathers for this unsharded weight, bytes of the same weight in bf16).

    For an ``AtomQuantTensor``: packed INT4 + group scales + INT8 outliers + outlier scales (the
    permutation is not gathered). For a plain tensor: its own bytes.
    """
    if isinstance(weight, DTensor):
        raise ValueError("all_gather_bytes: pass the unsharded weight (before fully_shard)")
    bf16 = weight.numel() * 2
    if isinstance(weight, AtomQuantTensor):
        parts = [weight.qdata, weight.scale, weight.outlier_scale, weight.outlier_qdata]
        return sum(t.numel() * t.element_size() for t in parts), bf16
    return weight.numel() * weight.element_size(), bf16


class AllGatherCounter:
    """Counts the bytes of FSDP2's all-gathers (output buffer size, all ranks together).

    ``counter = AllGatherCounter.install(model)`` replaces the all-gather of every
    ``fully_shard``-ed module in ``model`` by a counting one (through FSDP2's
    ``set_custom_all_gather``); read ``counter.bytes`` / ``counter.calls``; ``reset()`` to zero.
    """

    def __init__(self):
        self.bytes = 0
        self.calls = 0

    def reset(self) -> None:
        self.bytes = 0
        self.calls = 0

    @classmethod
    def install(cls, model: nn.Module) -> "AllGatherCounter":
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather

        counter = cls()

        class _Counting(AllGather):
            def allocate(self, size, *, dtype, device):
                return torch.empty(*size, dtype=dtype, device=device)

            def __call__(self, output_tensor, input_tensor, group, async_op=False):
                counter.bytes += output_tensor.numel() * output_tensor.element_size()
                counter.calls += 1
                return _all_gather(output_tensor, input_tensor, group=group, async_op=async_op)

        comm = _Counting()
        modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        if not modules:
            raise ValueError("AllGatherCounter.install: no fully_shard-ed module in the model")
        for m in modules:
            m.set_custom_all_gather(comm)
        return counter


# ---------------------------------------------------------------- tensor parallelism


def _mesh_rank_world(device_mesh) -> tuple[int, int]:
    if device_mesh.ndim != 1:
        raise ValueError(f"atom_ao tensor parallelism needs a 1-D mesh, got {device_mesh.ndim}-D")
    return device_mesh.get_local_rank(), device_mesh.size()


def shard_k_bounds(weight: AtomQuantTensor, world: int, what: str = "weight") -> list[tuple[int, int]]:
    """Blocks [start, end) of the permuted K that the ranks of a row-wise shard hold.

    The blocks are those of ``torch.chunk`` (``ceil(K / world)`` channels each, as DTensor's
    ``Shard(1)``); raises ``ValueError`` unless every inner boundary is a multiple of
    ``group_size`` below ``K - n_outliers`` (whole INT4 groups per rank, all outliers on the
    last rank).
    """
    n, k = weight.shape
    gs, n_out = weight.group_size, weight.n_outliers
    k_normal = k - n_out
    chunk = -(-k // world)
    bounds = [(r * chunk, min((r + 1) * chunk, k)) for r in range(world)]
    bad = [s for s, _ in bounds[1:] if s % gs or s >= k_normal]
    if bad or bounds[-1][0] >= bounds[-1][1]:
        raise ValueError(
            f"{what}: row-wise (Shard(1)) sharding of K={k} over {world} ranks cuts at {[s for s, _ in bounds[1:]]}; "
            f"every cut must be a multiple of group_size={gs} below K - n_outliers={k_normal}, so that each "
            "rank holds whole INT4 groups and the last one the whole outlier block. Use fewer ranks, a "
            "group_size dividing K / world, or column-wise sharding for this layer"
        )
    return bounds


def shard_k(weight: AtomQuantTensor, rank: int, world: int, what: str = "weight") -> AtomQuantTensor:
    """Rank ``rank``'s row-wise shard: its block of the permuted K as a complete AtomQuantTensor
    (whole INT4 groups; the outliers only on the last rank; identity permutation, because its
    input arrives already permuted)."""
    start, end = shard_k_bounds(weight, world, what)[rank]
    gs, half = weight.group_size, weight.group_size // 2
    n, k = weight.shape
    last = rank == world - 1
    g0 = start // gs
    g1 = weight.scale.shape[1] if last else end // gs
    n_out = weight.n_outliers if last else 0
    local_k = end - start
    assert k_normal_padded(local_k, n_out, gs) == (g1 - g0) * gs
    return AtomQuantTensor(
        weight.qdata[:, g0 * half:g1 * half],
        weight.scale[:, g0:g1],
        weight.outlier_qdata if last else weight.outlier_qdata[:, :0],
        weight.outlier_scale if last else torch.zeros_like(weight.outlier_scale),
        torch.arange(local_k, dtype=torch.int32, device=weight.perm.device),
        weight.group_size,
        weight.act_clip_ratio,
        weight.dtype,
    )


def _from_source_rank(weight: AtomQuantTensor, device_mesh, src_data_rank: int | None) -> AtomQuantTensor:
    """torch's ``src_data_rank`` semantics for a packed weight: with a source rank, every rank
    takes that rank's packed tensors (a broadcast of each part; DTensor's scatter cannot carry a
    tensor subclass); with None, each rank keeps its own copy."""
    if src_data_rank is None:
        return weight
    group = device_mesh.get_group()
    src = dist.get_global_rank(group, src_data_rank)
    parts = []
    for name in weight.tensor_data_names:
        t = getattr(weight, name).detach().clone().contiguous()
        dist.broadcast(t, src=src, group=group)
        parts.append(t)
    return AtomQuantTensor(*parts, weight.group_size, weight.act_clip_ratio, weight.dtype)


def _is_identity(perm: torch.Tensor) -> bool:
    return bool(torch.equal(perm.long(), torch.arange(perm.numel(), device=perm.device)))


class _AtomPartitionMixin:
    """The weight partition shared by the two styles: float linears go to torch's style; a
    packed weight is taken from ``src_data_rank``, cut by ``_atom_shard`` and registered as a
    DTensor parameter with the whole weight's logical shape; the float bias is distributed."""

    def _partition_linear_fn(self, name, module, device_mesh):
        weight = module.weight
        if not isinstance(weight, AtomQuantTensor):
            return super()._partition_linear_fn(name, module, device_mesh)
        rank, world = _mesh_rank_world(device_mesh)
        weight = _from_source_rank(weight, device_mesh, self.src_data_rank)
        local, placement, bias_placement = self._atom_shard(name or "linear", weight, rank, world)
        dt = DTensor.from_local(local, device_mesh, [placement], run_check=False, shape=weight.shape,
                                stride=weight.stride())
        module.register_parameter("weight", nn.Parameter(dt, requires_grad=False))
        if module.bias is not None:
            module.register_parameter("bias", nn.Parameter(
                distribute_tensor(module.bias.detach(), device_mesh, [bias_placement],
                                  src_data_rank=self.src_data_rank),
                requires_grad=module.bias.requires_grad))
        self._atom_after_partition(module, weight)

    def _atom_after_partition(self, module, weight) -> None:
        pass


class AtomColwiseParallel(_AtomPartitionMixin, ColwiseParallel):
    """``ColwiseParallel`` for linears holding an ``AtomQuantTensor``: weight ``Shard(0)``.

    Each rank keeps its block of output rows (``torch.chunk`` blocks) of every per-row tensor
    and the whole permutation. Float linears are handled by ``ColwiseParallel`` itself.
    """

    def _atom_shard(self, name, weight, rank, world):
        chunks = torch.chunk(weight, world, dim=0)
        if len(chunks) != world:
            raise ValueError(f"{name}: {weight.shape[0]} output rows cannot be split over {world} ranks")
        return chunks[rank], Shard(0), Shard(0)


class AtomRowwiseParallel(_AtomPartitionMixin, RowwiseParallel):
    """``RowwiseParallel`` for linears holding an ``AtomQuantTensor``: weight ``Shard(1)`` of the
    *permuted* K (see the module docstring and ``shard_k``), bias replicated, output summed by
    the all-reduce (or reduce-scattered, with ``output_layouts=Shard(...)``).

    Its input is expected as for ``RowwiseParallel`` (``input_layouts``, default ``Shard(-1)``);
    when the weight's permutation is not the identity, the input is all-gathered and permuted
    before each rank takes its block.
    """

    def _atom_shard(self, name, weight, rank, world):
        return shard_k(weight, rank, world, what=name), Shard(1), Replicate()

    def _atom_after_partition(self, module, weight) -> None:
        perm = None if _is_identity(weight.perm) else weight.perm.long()
        module.register_buffer(_INPUT_PERM, perm, persistent=False)

    @staticmethod
    def _prepare_input_fn(input_layouts, desired_input_layouts, mod, inputs, device_mesh):
        perm = getattr(mod, _INPUT_PERM, None)
        if perm is None:  # float weight, or an identity permutation: the standard row-wise input
            return RowwiseParallel._prepare_input_fn(input_layouts, desired_input_layouts, mod, inputs, device_mesh)
        if isinstance(perm, DTensor):  # distribute_module replicates the module's other buffers
            perm = perm.to_local()
        x = inputs[0]
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, device_mesh, input_layouts, run_check=False)
        # whole activation on every rank, in the weight's permuted order, then each rank's block
        full = x.redistribute(placements=[Replicate()]).to_local()
        permuted = full.index_select(-1, perm.to(full.device))
        return DTensor.from_local(permuted, device_mesh, [Replicate()], run_check=False).redistribute(
            placements=[Shard(-1)])

"""Tensor parallelism (DTensor) of Atom-quantized linears: column-wise Shard(0), row-wise Shard(1).

Single-process tests check the row-wise split of K (whole groups, outliers on the last rank)
and the aten ops DTensor runs; the distributed test runs 2 CPU processes over gloo and
compares with the unsharded quantized model.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchao.quantization import quantize_

from atom_ao import AtomQuantTensor, atom_config
from atom_ao.distributed import shard_k, shard_k_bounds
from atom_ao.fold import fold_mlp_permutations
from atom_ao.tensor import atom_linear
from test_handler import tiny_llama

QCFG = dict(n_outliers=32, group_size=32, weight_clip_ratio=1.0)


def _weight(n=48, k=512, n_outliers=64, group_size=64, seed=0, identity=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    perm = torch.arange(k) if identity else torch.randperm(k, generator=g)
    return AtomQuantTensor.from_hp(w, perm.to(torch.int32), n_outliers, group_size, weight_clip_ratio=1.0)


# ---------------------------------------------------------------- single process


def test_shard_k_holds_whole_groups_and_sums_to_the_layer():
    w = _weight()
    x = torch.randn(5, 512) * torch.linspace(0.1, 30, 512)  # some loud channels
    world = 4
    bounds = shard_k_bounds(w, world)
    assert bounds == [(0, 128), (128, 256), (256, 384), (384, 512)]
    xp = x.index_select(1, w.perm.long())  # the input in the weight's permuted order
    parts = []
    for r, (s, e) in enumerate(bounds):
        local = shard_k(w, r, world)
        assert local.shape == (48, e - s) and local.n_outliers == (64 if r == world - 1 else 0)
        assert torch.equal(local.perm, torch.arange(e - s, dtype=torch.int32))
        parts.append(atom_linear(xp[:, s:e], local, None))
        # each rank quantizes its groups of the activation exactly as the whole layer does
        a_local = torch.ops.atom_ao.quantize_activation(xp[:, s:e], local.perm, local.n_outliers, 64, 0.9)
        a_full = torch.ops.atom_ao.quantize_activation(x, w.perm, 64, 64, 0.9)
        assert torch.equal(a_local[0], a_full[0][:, s // 2:s // 2 + a_local[0].shape[1]])
        if r == world - 1:
            assert torch.equal(a_local[2], a_full[2]) and torch.equal(a_local[3], a_full[3])
    torch.testing.assert_close(sum(parts), atom_linear(x, w, None), rtol=1e-5, atol=1e-5)


def test_shard_k_refuses_cuts_inside_groups_or_outliers():
    with pytest.raises(ValueError, match="multiple of group_size=128"):
        shard_k_bounds(_weight(k=576, n_outliers=128, group_size=128), 2)  # cut at 288
    with pytest.raises(ValueError, match="below K - n_outliers=384"):
        shard_k_bounds(_weight(k=512, n_outliers=128, group_size=128), 4)  # cut at 384
    assert shard_k_bounds(_weight(k=576, n_outliers=128, group_size=32), 2) == [(0, 288), (288, 576)]


def test_transposed_weight_runs_mm_and_addmm():
    w = _weight()
    x, b = torch.randn(3, 512), torch.randn(48)
    wt = w.t()
    assert wt.shape == (512, 48) and isinstance(wt.t(), AtomQuantTensor)
    assert torch.equal(torch.mm(x, wt), F.linear(x, w))
    assert torch.equal(torch.addmm(b, x, wt), F.linear(x, w, b))
    with pytest.raises(NotImplementedError, match="beta"):
        torch.addmm(b, x, wt, beta=2)


# ---------------------------------------------------------------- 2 processes, gloo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _llama_plan(C, R, colwise_only=False):
    if colwise_only:  # every linear Shard(0); activations all-gathered where a whole one is needed
        from torch.distributed.tensor import Replicate, Shard

        out = dict(input_layouts=Shard(-1), output_layouts=Replicate())
        return {"self_attn.q_proj": C(), "self_attn.k_proj": C(), "self_attn.v_proj": C(),
                "self_attn.o_proj": C(**out), "mlp.gate_proj": C(), "mlp.up_proj": C(),
                "mlp.down_proj": C(**out)}
    return {"self_attn.q_proj": C(), "self_attn.k_proj": C(), "self_attn.v_proj": C(),
            "self_attn.o_proj": R(), "mlp.gate_proj": C(), "mlp.up_proj": C(), "mlp.down_proj": R()}


def _worker(rank: int, world: int, port: int):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from atom_ao.distributed import AtomColwiseParallel, AtomRowwiseParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        x = torch.randn(2, 5, 512, generator=torch.Generator().manual_seed(1))

        # -- one linear per style (with bias), against the unsharded quantized layer of rank 0:
        # each rank starts from a different model; src_data_rank=0 (the default) makes rank 0's
        # packed weight the truth, as torch's styles do for float weights
        for style, identity in [("col", False), ("row", False), ("row", True), ("torch_col", False)]:
            torch.manual_seed(0 if style == "torch_col" else rank)
            lin = torch.nn.Sequential(torch.nn.Linear(512, 96))
            quantize_(lin, atom_config(n_outliers=64, group_size=64, weight_clip_ratio=1.0))
            if identity:
                w = lin[0].weight
                lin[0].weight = torch.nn.Parameter(AtomQuantTensor(
                    w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, torch.arange(512, dtype=torch.int32),
                    w.group_size, w.act_clip_ratio, w.dtype), requires_grad=False)
            with torch.no_grad():
                ref = lin(x)
            dist.broadcast(ref, src=0)
            if style == "col":
                parallelize_module(lin, mesh, {"0": AtomColwiseParallel()})
                expect = ref.chunk(world, dim=-1)[rank]
            elif style == "torch_col":  # torch's own style works too when it cuts locally
                parallelize_module(lin, mesh, {"0": ColwiseParallel()}, src_data_rank=None)
                expect = ref.chunk(world, dim=-1)[rank]
            else:  # input arrives sharded on the last dim, as after a column-wise layer
                parallelize_module(lin, mesh, {"0": AtomRowwiseParallel()})
                assert (lin[0].atom_tp_input_perm is None) == identity
                expect = ref
            w = lin[0].weight
            assert isinstance(w, DTensor) and isinstance(w._local_tensor, AtomQuantTensor)
            assert w.placements == ((Shard(0),) if "col" in style else (Shard(1),))
            inp = x if "col" in style else x.chunk(world, dim=-1)[rank]
            with torch.no_grad():
                out = lin(inp)
            if "col" in style:
                assert torch.equal(out, expect), style  # bit-identical columns
            else:  # partial sums over whole groups, summed by the all-reduce
                torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)

        # -- torch's RowwiseParallel cannot cut K of a packed weight: a clear error
        lin = torch.nn.Sequential(torch.nn.Linear(512, 96))
        quantize_(lin, atom_config(n_outliers=64, group_size=64, weight_clip_ratio=1.0))
        try:
            parallelize_module(lin, mesh, {"0": RowwiseParallel()}, src_data_rank=None)
        except NotImplementedError as e:
            assert "AtomRowwiseParallel" in str(e)
        else:
            raise AssertionError("RowwiseParallel of an AtomQuantTensor was not refused")

        # -- a Llama: q/k/v/gate/up column-wise, o/down row-wise (down's permutation folded)
        ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
        model = tiny_llama(layers=2)
        quantize_(model, atom_config(**QCFG), filter_fn=lambda m, f: isinstance(m, torch.nn.Linear) and f != "lm_head")
        assert fold_mlp_permutations(model) == 2
        with torch.no_grad():
            ref = model(ids).logits
        for layer in model.model.layers:
            parallelize_module(layer, mesh, _llama_plan(AtomColwiseParallel, AtomRowwiseParallel))
        layer = model.model.layers[0]
        assert layer.mlp.down_proj.atom_tp_input_perm is None  # folded: no extra all-gather
        assert layer.self_attn.o_proj.atom_tp_input_perm is not None  # gathered and permuted
        with torch.no_grad():
            out = model(ids).logits
        # each row-wise layer is exact up to float32 summation order; through the network a
        # last-bit change can flip an INT4 rounding of a later activation, hence the tolerance
        cos = F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
        assert cos > 0.999 and (out - ref).abs().max() < 0.05 * ref.abs().max(), (cos, (out - ref).abs().max())

        # -- the same model all column-wise: bit-identical logits
        model = tiny_llama(layers=2)
        quantize_(model, atom_config(**QCFG), filter_fn=lambda m, f: isinstance(m, torch.nn.Linear) and f != "lm_head")
        with torch.no_grad():
            ref = model(ids).logits
        for layer in model.model.layers:
            parallelize_module(layer, mesh, _llama_plan(AtomColwiseParallel, AtomRowwiseParallel, colwise_only=True))
        with torch.no_grad():
            assert torch.equal(model(ids).logits, ref)
    finally:
        dist.destroy_process_group()
    # the checks passed and the group is gone: leave without interpreter finalization, where the
    # full suite's runs of this worker aborted twice ("terminate called without an active
    # exception", a C++ thread torn down late; a barrier before the teardown did not help; cause
    # not found). A failed check raised above and still fails the test.
    os._exit(0)


def test_tensor_parallel_two_ranks_gloo():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)

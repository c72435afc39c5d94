"""FSDP2 (fully_shard) over Atom-quantized models: packed all-gather, bit-identical forward.

The distributed test runs 2 CPU processes over gloo (torch.multiprocessing.spawn); the
others check, in one process, the ops FSDP2 calls on the parameter and the all-gather
extension (pre -> concatenate like the collective -> post).
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torchao.quantization import quantize_

from atom_ao import AtomQuantTensor, atom_config
from atom_ao.distributed import all_gather_bytes
from test_handler import tiny_llama

QCFG = dict(n_outliers=64, weight_clip_ratio=1.0)  # a fixed clip ratio: no search, fast


def _weight(n=64, k=512, n_outliers=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    perm = torch.randperm(k, generator=g).to(torch.int32)
    return AtomQuantTensor.from_hp(w, perm, n_outliers, 128, weight_clip_ratio=1.0)


def _same(a: AtomQuantTensor, b: AtomQuantTensor) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in a.tensor_data_names) and (
        a.shape, a.dtype, a.group_size, a.act_clip_ratio) == (b.shape, b.dtype, b.group_size, b.act_clip_ratio)


# ---------------------------------------------------------------- single process


def test_ops_fsdp_calls_on_the_parameter():
    w = _weight()
    # torch.chunk along dim 0 (FSDP2 / DTensor Shard(0)): per-row tensors split, perm whole
    chunks = torch.chunk(w, 2, dim=0)
    assert [tuple(c.shape) for c in chunks] == [(32, 512), (32, 512)]
    assert torch.equal(chunks[1].qdata, w.qdata[32:]) and chunks[1].perm is w.perm
    assert _same(torch.cat(chunks), w)
    # new_zeros + narrow + copy_ (how FSDP2 builds its padded shard), view(-1), as_strided
    padded = w.new_zeros((32, 512))
    assert isinstance(padded, AtomQuantTensor) and not padded.qdata.any()
    padded.narrow(0, 0, 32).copy_(chunks[1])
    assert _same(padded, chunks[1])
    assert isinstance(padded.view(-1), AtomQuantTensor)
    assert _same(torch.as_strided(w, (64, 512), (512, 1), 0), w)
    # K is never split
    with pytest.raises(NotImplementedError, match="AtomRowwiseParallel"):
        torch.chunk(w, 2, dim=1)
    with pytest.raises(NotImplementedError, match="new_zeros"):
        w.new_zeros((32, 256))
    with pytest.raises(NotImplementedError, match="as_strided"):
        torch.as_strided(w, (32, 512), (512, 1), 0)


def test_all_gather_extension_round_trip():
    """pre_all_gather on each shard, concatenate like the collective, post_all_gather: the
    same AtomQuantTensor, without ever dequantizing; the permutation is not gathered."""

    class _Mesh:
        def size(self):
            return 2

    for n_outliers in (64, 0):
        w = _weight(n_outliers=n_outliers)
        shards = torch.chunk(w, 2, dim=0)
        pre = [s.fsdp_pre_all_gather(_Mesh(), w.shape, (512, 1), None, None) for s in shards]
        inputs = [p[0] for p in pre]
        assert all(t.dtype in (torch.uint8, torch.int8, torch.float32) for t in inputs[0])
        assert not any(t is shards[0].perm for t in inputs[0])
        gathered = tuple(torch.cat([inp[i] for inp in inputs]) for i in range(len(inputs[0])))
        full, inner = shards[0].fsdp_post_all_gather(gathered, pre[0][1], torch.float32)
        assert _same(full, w) and full.qdata.data_ptr() == gathered[0].data_ptr()  # views, no copy
        assert shards[0].fsdp_post_all_gather(gathered, pre[0][1], torch.float32, out=full) is None
        half, _ = shards[0].fsdp_post_all_gather(gathered, pre[0][1], torch.bfloat16)  # mixed precision
        assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divisible by the FSDP world size"):
        _weight(n=33)[:17].fsdp_pre_all_gather(_Mesh(), torch.Size((33, 512)), (512, 1), None, None)


def test_all_gather_bytes_about_4x_fewer_than_bf16():
    w = AtomQuantTensor.from_hp(torch.randn(256, 4096), torch.arange(4096, dtype=torch.int32), 128, 128, 1.0)
    atom, bf16 = all_gather_bytes(w)
    # per row: 3968/2 packed + 31*4 scales + 128 outliers + 4 outlier scale = 2240 bytes vs 8192
    assert atom == 256 * 2240 and bf16 == 256 * 8192
    assert 3.6 < bf16 / atom < 3.7


# ---------------------------------------------------------------- 2 processes, gloo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    from atom_ao.distributed import AllGatherCounter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))

        # -- the quantized model (identical on every rank: quantize_ is deterministic)
        model = tiny_llama(layers=2)
        quantize_(model, atom_config(**QCFG))
        with torch.no_grad():
            ref = model(ids).logits
        q = model.model.layers[0].self_attn.q_proj.weight
        q_rows = q.qdata.clone()
        expect_atom = sum(all_gather_bytes(m.weight)[0] for m in model.modules()
                          if isinstance(m, torch.nn.Linear))
        expect_bf16 = sum(all_gather_bytes(m.weight)[1] for m in model.modules()
                          if isinstance(m, torch.nn.Linear))
        expect_float = sum(p.numel() * p.element_size() for p in model.parameters()
                           if not isinstance(p, AtomQuantTensor))

        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

        # sharded: each rank holds its rows of the packed data, the whole permutation
        w = model.model.layers[0].self_attn.q_proj.weight
        assert isinstance(w, DTensor) and isinstance(w._local_tensor, AtomQuantTensor)
        local = w._local_tensor
        rows = q.shape[0] // world
        assert torch.equal(local.qdata, q_rows[rank * rows:(rank + 1) * rows]) and local.perm.shape == (256,)

        counter = AllGatherCounter.install(model)
        with torch.no_grad():
            out = model(ids).logits
        assert torch.equal(out, ref), (out - ref).abs().max()  # bit-identical
        # every byte gathered is packed Atom data or a float (norm / embedding) parameter
        assert counter.bytes == expect_atom + expect_float, (counter.bytes, expect_atom, expect_float)
        assert expect_bf16 / expect_atom > 2.4  # K=256 is tiny: padding and 64 outliers weigh; 3.65x at K=4096
        assert isinstance(model.model.layers[0].self_attn.q_proj.weight, DTensor)  # resharded

        with torch.no_grad():  # later forwards refill the same all-gather buffers in place
            assert torch.equal(model(ids).logits, ref)

        # the sharded state dict gathers back to the original packed weight
        full = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].full_tensor()
        assert isinstance(full, AtomQuantTensor) and torch.equal(full.qdata, q_rows)

        # -- measured against bf16: the same model, float weights in bf16, sharded the same way;
        # per forward, the layers' all-gathers (the root stays unsharded after the first one)
        def gathered_per_step(m, which):
            expected = sum(all_gather_bytes(p)[which] for p in m.model.layers.parameters())
            for layer in m.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(m, mesh=mesh)
            with torch.no_grad():
                m(ids)  # first forward: the root unit is gathered once and kept
            c = AllGatherCounter.install(m)
            with torch.no_grad():
                m(ids)
            return c.bytes, expected

        bf16_model = tiny_llama(layers=2)
        for p in bf16_model.parameters():
            p.data = p.data.to(torch.bfloat16)
        atom_model = tiny_llama(layers=2)
        quantize_(atom_model, atom_config(**QCFG), filter_fn=lambda m, f: isinstance(m, torch.nn.Linear) and f != "lm_head")
        (atom_step, layers_atom), (bf16_step, layers_bf16) = gathered_per_step(atom_model, 0), gathered_per_step(bf16_model, 1)
        assert (atom_step, bf16_step) == (layers_atom, layers_bf16), (atom_step, layers_atom, bf16_step, layers_bf16)
        assert bf16_step / atom_step > 2.4  # 256 = 128 normal + 64 outliers + 64 padding; 3.67x at 7B shapes

        # -- mixed precision: the gathered weight computes in bf16 (its logical dtype)
        model = tiny_llama(layers=1, seed=1)
        quantize_(model, atom_config(**QCFG))
        ref_model = tiny_llama(layers=1, seed=1)
        quantize_(ref_model, atom_config(**QCFG))
        for m in ref_model.modules():  # what param_dtype=bf16 does: parameters only, not buffers
            for name, p in list(m.named_parameters(recurse=False)):
                setattr(m, name, torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
        with torch.no_grad():
            ref = ref_model(ids).logits
        mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp_policy)
        fully_shard(model, mesh=mesh, mp_policy=mp_policy)
        with torch.no_grad():
            out = model(ids).logits
        assert out.dtype == torch.bfloat16 and torch.equal(out, ref), (out.float() - ref.float()).abs().max()

        # -- output rows not divisible by the world size: a clear error, on every rank
        lin = torch.nn.Sequential(torch.nn.Linear(512, 33))
        quantize_(lin, atom_config(**QCFG))
        fully_shard(lin, mesh=mesh)
        try:
            lin(torch.randn(2, 512))
        except ValueError as e:
            assert "divisible by the FSDP world size" in str(e)
        else:
            raise AssertionError("uneven rows were not refused")
    finally:
        dist.destroy_process_group()
    # the checks passed and the group is gone: leave without interpreter finalization, where the
    # full suite's runs of this worker aborted twice ("terminate called without an active
    # exception", a C++ thread torn down late; a barrier before the teardown did not help; cause
    # not found). A failed check raised above and still fails the test.
    os._exit(0)


def test_fully_shard_two_ranks_gloo():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_bench_fsdp_cpu_tiny(tmp_path, monkeypatch):
    """benchmarks/bench_fsdp.py (the 2-GPU benchmark) in its CPU/gloo smoke mode."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import bench_fsdp

    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    bench_fsdp.main(["--cpu", "--tiny", "--layers", "1", "--iters", "1", "--warmup", "0"])
    rows = {r["model"]: r for r in json.loads((tmp_path / "bench_fsdp_tiny_cpu.json").read_text())["rows"]}
    assert rows.keys() == {"bf16", "atom"}
    for r in rows.values():
        assert r["bit_identical_all_ranks"] and r["all_gather_MB"] == r["expected_MB"] and r["all_gather_calls"] == 1
    assert rows["atom"]["bf16_MB"] == rows["bf16"]["all_gather_MB"]
    assert rows["atom"]["gather_vs_bf16_fsdp"] < 0.45  # 0.38 at hidden 256; 0.27 at 4096

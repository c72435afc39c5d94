"""FSDP2 forward of a Llama-2-7B-shaped stack of decoder layers: Atom W4A4 vs bf16.

For each model (``bf16``: the float layers; ``atom``: the same layers after
``quantize_(atom_config(weight_clip_ratio=1.0))``, data-free, activations bf16) it measures, on
every rank of a ``fully_shard``-ed stack (one FSDP unit per decoder layer + the root, default
``reshard_after_forward=True``, so every forward all-gathers every layer):

* the forward time (median of ``--iters`` steps, ``torch.no_grad``), sharded and unsharded;
* the bytes FSDP2 all-gathers per forward (``atom_ao.distributed.AllGatherCounter``, counted in a
  separate step after the timing), next to the expected ones (``all_gather_bytes``);
* whether the sharded forward equals the unsharded model's (bit-identical expected).

Random weights; embeddings are not used (``inputs_embeds``; vocabulary 128). The bytes per step
are the decoder layers' (the root unit stays unsharded after the first forward).

    torchrun --nproc-per-node 2 benchmarks/bench_fsdp.py                # 2 GPUs, NCCL
    python benchmarks/bench_fsdp.py --cpu --tiny                        # 2 CPU processes, gloo

Without torchrun (no ``RANK`` in the environment) the script spawns ``--nproc`` processes itself.
Results (rank 0): ``benchmarks/results/bench_fsdp[_tiny]_<gpu>.{json,md}`` via
``benchmarks.common.write_results`` (``ATOM_AO_RESULTS`` overrides the folder).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32)
TINY = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="gloo on CPU (default: NCCL, one GPU per rank)")
    p.add_argument("--tiny", action="store_true", help="hidden 256, 2 layers, 64 tokens (a CPU smoke run)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 4; --tiny: 2)")
    p.add_argument("--batch", type=int, default=None, help="sequences per rank (default 4; --tiny: 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 2048; --tiny: 32)")
    p.add_argument("--iters", type=int, default=None, help="timed forwards (default 20; --tiny: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards first (default 3; --tiny: 1)")
    p.add_argument("--nproc", type=int, default=2, help="processes to spawn when not under torchrun")
    p.add_argument("--models", default="bf16,atom", help="comma list of bf16, atom")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each layer's attention and MLP (inside the FSDP units; the "
                        "all-gather hooks stay eager)")
    p.add_argument("--tag", default="", help="appended to the result file name (e.g. decode)")
    a = p.parse_args(argv)
    d = dict(layers=2, batch=2, seq=32, iters=3, warmup=1) if a.tiny else dict(layers=4, batch=4, seq=2048,
                                                                              iters=20, warmup=3)
    for k, v in d.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def build_stack(args, device):
    """A LlamaModel of ``args.layers`` decoder layers (7B shapes, or tiny), bf16, random weights,
    identical on every rank (same seed, deterministic init on the same device type)."""
    from transformers import LlamaConfig, LlamaModel

    shapes = TINY if args.tiny else LLAMA2_7B
    cfg = LlamaConfig(**shapes, num_hidden_layers=args.layers, vocab_size=128, max_position_embeddings=args.seq)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaModel(cfg).to(torch.bfloat16).eval()
    return model


def quantize(model):
    from torchao.quantization import quantize_

    from atom_ao import atom_config

    quantize_(model, atom_config(weight_clip_ratio=1.0))  # data-free, no clip search: seconds on a GPU
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, x, iters, warmup, device) -> float:
    """Median ms of one forward (all ranks step together)."""
    with torch.no_grad():
        for _ in range(warmup):
            model(inputs_embeds=x)
        times = []
        for _ in range(iters):
            _sync(device)
            if dist.is_initialized():
                dist.barrier()
            t0 = time.perf_counter()
            model(inputs_embeds=x)
            _sync(device)
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def run(rank: int, world: int, args) -> list[dict]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from atom_ao import AtomQuantTensor
    from atom_ao.distributed import AllGatherCounter, all_gather_bytes

    if args.cpu:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))
    g = torch.Generator(device=device).manual_seed(1 + rank)  # each rank its own batch, as in data parallel
    x = torch.randn(args.batch, args.seq, TINY["hidden_size"] if args.tiny else LLAMA2_7B["hidden_size"],
                    generator=g, device=device, dtype=torch.bfloat16)

    rows = []
    for name in args.models.split(","):
        model = build_stack(args, device)
        if name == "atom":
            quantize(model)
        elif name != "bf16":
            raise ValueError(f"unknown model {name}")
        # per step, FSDP2 gathers the decoder layers; the root unit (final norm, unused embedding)
        # keeps its parameters unsharded after the first forward (reshard_after_forward=False for
        # the root by default), so it is not part of a step's all-gather
        expect = sum(all_gather_bytes(p)[0] for p in model.layers.parameters())
        bf16_bytes = sum(all_gather_bytes(p)[1] for p in model.layers.parameters())
        n_atom = sum(isinstance(p, AtomQuantTensor) for p in model.parameters())
        if args.compile:
            for layer in model.layers:  # one graph each for attention and MLP, shared by the layers
                layer.self_attn.compile(dynamic=False)
                layer.mlp.compile(dynamic=False)
        with torch.no_grad():
            ref = model(inputs_embeds=x).last_hidden_state
        unsharded_ms = time_forward(model, x, args.iters, args.warmup, device)

        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        sharded_ms = time_forward(model, x, args.iters, args.warmup, device)
        counter = AllGatherCounter.install(model)  # after the timing: the default all-gather was timed
        with torch.no_grad():
            out = model(inputs_embeds=x).last_hidden_state
        _sync(device)
        identical = bool(torch.equal(out, ref))
        max_diff = float((out.float() - ref.float()).abs().max())
        # the result on every rank must agree on correctness
        flag = torch.tensor([int(identical)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        rows.append(dict(
            model=name, layers=args.layers, tokens_per_rank=args.batch * args.seq, ranks=world,
            atom_linears=n_atom, fwd_ms_fsdp=sharded_ms, fwd_ms_unsharded=unsharded_ms,
            all_gather_MB=counter.bytes / 2**20, all_gather_calls=counter.calls,
            expected_MB=expect / 2**20, bf16_MB=bf16_bytes / 2**20,
            bf16_over_gathered=bf16_bytes / max(counter.bytes, 1),
            bit_identical_all_ranks=bool(flag.item()), max_abs_diff=max_diff,
        ))
        if rank == 0:
            r = rows[-1]
            print(f"{name:5s} fsdp {sharded_ms:9.2f} ms  unsharded {unsharded_ms:9.2f} ms  "
                  f"all-gather {r['all_gather_MB']:9.2f} MB/step ({r['all_gather_calls']} calls; expected "
                  f"{r['expected_MB']:.2f}, bf16 would be {r['bf16_MB']:.2f})  identical={r['bit_identical_all_ranks']}",
                  flush=True)
        del model, counter
        if device.type == "cuda":
            torch.cuda.empty_cache()
    by = {r["model"]: r for r in rows}
    if "bf16" in by and "atom" in by:
        for r in rows:
            r["fwd_vs_bf16_fsdp"] = r["fwd_ms_fsdp"] / by["bf16"]["fwd_ms_fsdp"]
            r["gather_vs_bf16_fsdp"] = r["all_gather_MB"] / by["bf16"]["all_gather_MB"]
    return rows


COLUMNS = ["model", "layers", "tokens_per_rank", "ranks", "fwd_ms_fsdp", "fwd_ms_unsharded", "fwd_vs_bf16_fsdp",
           "all_gather_MB", "expected_MB", "gather_vs_bf16_fsdp", "all_gather_calls", "bit_identical_all_ranks",
           "max_abs_diff"]


def main_worker(rank: int, world: int, args, port: int | None = None):
    if port is not None:  # spawned by this script, not torchrun
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    if args.cpu:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    else:
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=local)
    try:
        rows = run(rank, world, args)
        if rank == 0:
            from benchmarks.common import write_results

            shapes = "tiny" if args.tiny else "llama2-7b"
            base = "bench_fsdp_tiny" if args.tiny else "bench_fsdp"
            stem = write_results(base + (f"_{args.tag}" if args.tag else ""), rows, COLUMNS, meta=dict(
                shapes=shapes, layers=args.layers, compiled=args.compile, batch=args.batch, seq=args.seq, iters=args.iters,
                backend=dist.get_backend(), world=world,
                note="forward only, torch.no_grad, fully_shard per decoder layer + root, "
                     "reshard_after_forward=True; all-gather bytes = output buffer of all ranks"))
            print(f"results: {stem}.md")
        # every rank leaves together: a rank that tore gloo down while rank 0 still wrote its
        # results aborted once in CI ("terminate called without an active exception")
        dist.barrier()
        return rows
    finally:
        dist.destroy_process_group()


def _spawned_worker(rank, world, args, port):
    main_worker(rank, world, args, port)
    # done and the group is gone: leave without interpreter finalization, where a spawned gloo
    # rank aborted in CI after its results were written ("terminate called without an active
    # exception", a C++ thread torn down late; tests/test_fsdp.py's worker does the same). A
    # failure raised above and still fails the run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    args = parse_args(argv)
    if "RANK" in os.environ:  # torchrun
        main_worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    import torch.multiprocessing as mp

    mp.spawn(_spawned_worker, args=(args.nproc, args, _free_port()), nprocs=args.nproc, join=True)


if __name__ == "__main__":
    main()

"""Shared bits of the tutorials: a tiny random Llama and a 2-process gloo launcher (CPU)."""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.multiprocessing as mp


def tiny_llama(layers: int = 2, seed: int = 0):
    """A random LlamaForCausalLM small enough for a CPU (hidden 256, 4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512)
    return LlamaForCausalLM(cfg).eval()


def not_lm_head(module, fqn: str) -> bool:
    """quantize_'s filter_fn: every linear except the output head."""
    return isinstance(module, torch.nn.Linear) and fqn != "lm_head"


def _init_and_run(rank, world, port, fn):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world)
        dist.barrier()  # ranks leave together
    finally:
        dist.destroy_process_group()
    # done and the group is gone: leave without interpreter finalization, where spawned gloo
    # workers aborted now and then in CI ("terminate called without an active exception", a C++
    # thread torn down late; cause not found). A failure raised above and still fails the run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn, world: int = 2):
    """Run ``fn(rank, world)`` in ``world`` CPU processes joined by a gloo process group
    (what ``torchrun --nproc-per-node 2`` does, with NCCL, on GPUs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_init_and_run, args=(world, port, fn), nprocs=world, join=True)

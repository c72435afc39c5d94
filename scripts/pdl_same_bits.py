"""Where do PDL's logits differ? bench_generate's small Atom + INT4 KV model (2 layers, batch 1,
prompt + 4 decode steps) built under several PDL settings, each compared with a first plain run:
a second plain run (are the plain runs themselves the same bits?), atom_ao's PDL alone,
Inductor's own alone, both; compiled blocks and eager. Prints, per setting, the largest
difference of each step's logits from the first plain run. Autotuning is pinned unless
``--tuned`` (with it, two plain builds may already differ: each times its configs).

    python scripts/pdl_same_bits.py [--tuned]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def set_pdl(ours, inductors: bool, setattr_=setattr) -> None:
    """atom_ao's PDL switch (True, False or ``pdl.AUTO``) and Inductor's own, with compiles for
    real (no FX graph cache: a cached graph of another setting must not serve). ``setattr_``:
    e.g. pytest's ``monkeypatch.setattr`` (undone after the test)."""
    import torch._inductor.config as inductor_config

    from atom_ao.ops import pdl

    setattr_(pdl, "ENABLED", ours)
    if ours:
        pdl.install_inductor_hook()
    if hasattr(inductor_config.triton, "enable_pdl"):
        setattr_(inductor_config.triton, "enable_pdl", inductors)
    setattr_(inductor_config, "fx_graph_cache", False)


@torch.no_grad()
def decode_logits(compiled: bool = True, steps: int = 4, prompt: int = 40) -> torch.Tensor:
    """bench_generate's Atom + INT4 KV model, 2 small layers (GQA 8 / 2, fused projections), batch
    1: the logits of the prompt's last token and of ``steps`` decode steps, under the PDL switches
    as they are now."""
    from bench_generate import build
    from gpt import Int4KVCache, LlamaShape

    shape = LlamaShape(dim=1024, n_layers=2, n_heads=8, n_kv_heads=2, intermediate=2816, vocab=1000,
                       fused_qkv=True, fused_gate_up=True)
    model = build(shape, "atom-kv4", None, compiled)
    s = model.s
    model.setup_caches(1, prompt + steps, lambda layer: Int4KVCache(1, s.n_kv_heads, prompt + steps, s.head_dim,
                                                                    torch.bfloat16, "cuda"))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, s.vocab, (1, prompt), generator=gen).cuda()
    nxt = torch.randint(0, s.vocab, (steps, 1, 1), generator=gen).cuda()
    out = [model(ids, torch.arange(prompt, device="cuda"))]
    for i in range(steps):
        out.append(model(nxt[i], torch.tensor([prompt + i], device="cuda")))
    torch.cuda.synchronize()
    return torch.stack(out).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuned", action="store_true",
                    help="let every build autotune (by default each atom_ao autotuner keeps its first config "
                         "and Inductor's reductions are untuned: benchmarks/common.pin_autotuning)")
    args = ap.parse_args()
    if not args.tuned:
        from common import pin_autotuning

        print("pinned:", ", ".join(pin_autotuning()))
    settings = [  # (label, ours, Inductor's, compiled)
        ("plain, again", False, False, True),
        ("atom_ao PDL only", True, False, True),
        ("Inductor PDL only", False, True, True),
        ("both", True, True, True),
        ("both, again", True, True, True),
        ("eager plain", False, False, False),
        ("eager atom_ao PDL", True, False, False),
    ]
    set_pdl(False, False)
    base = decode_logits(True)
    eager_base = None
    print(f"{'setting':<22} max |logit - plain| per step (prefill, decode 1..)   same bits")
    for label, ours, inductors, compiled in settings:
        set_pdl(ours, inductors)
        got = decode_logits(compiled)
        ref = base if compiled else (eager_base if eager_base is not None else got)
        if not compiled and eager_base is None:
            eager_base = got
        diffs = " ".join(f"{(got[i] - ref[i]).abs().max().item():.3g}" for i in range(got.shape[0]))
        print(f"{label:<22} {diffs:<50} {torch.equal(got, ref)}", flush=True)


if __name__ == "__main__":
    main()

"""Traces for ``test_combine_pass.py``, run in a process of their own (``python combine_graphs.py``):
the decode attention decomposes into its Triton launches only when its kernels are compiled
Triton functions, not the interpreter's (which the CPU test session turns on for every kernel),
and on CUDA tensors: here fake ones, so no GPU is needed and nothing runs. Each case traces
attention -> views -> quantize with the functionalization Inductor's post-grad graph comes from,
runs the pass on it and prints what it found, one JSON object."""

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch._subclasses.functional_tensor import dispatch_functionalize  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

import atom_ao.inductor as ai  # noqa: E402
from atom_ao.inductor import combine, passes  # noqa: E402
from atom_ao.kv.format import new_paged_cache  # noqa: E402
from atom_ao.ops import kv_decode_attention as dec, pdl  # noqa: E402

dec._sm_count = lambda index: 132  # fake CUDA: no device to ask (an H100 / H200's count)
pdl.wanted = lambda t, want, one_token=False: False


def _quantize(y, perm):
    return torch.ops.atom_ao.quantize_activation(y, perm, 128, 128, 0.9)


def layer_view(out, perm):  # a decoder layer's: (B, H, D) -> (B, H, 1, D) -> (B, 1, H, D) -> (B, H * D)
    b, h, d = out.shape
    return _quantize(out.unsqueeze(2).transpose(1, 2).reshape(b, 1, h * d).reshape(-1, h * d), perm)


def transformers_view(out, perm):
    # atom_ao.kv.attention's out[:, None] (a full slice, then unsqueeze: written out, as indexing a
    # fake CUDA tensor asks for CUDA), then the layer's reshape + contiguous
    b, h, d = out.shape
    y = torch.ops.aten.slice.Tensor(out, 0, 0, 9223372036854775807).unsqueeze(1)
    return _quantize(y.reshape(b, 1, h * d).contiguous().reshape(-1, h * d), perm)


VIEWS = {
    "layer": layer_view,
    "transformers": transformers_view,
    "also_read": lambda out, perm: (layer_view(out, perm), out.sum()),
    # (B, H, D) -> (B, D, H): channel h * D + d would be read as d * H + h
    "reordered": lambda out, perm: _quantize(out.transpose(1, 2).reshape(out.shape[0], -1), perm),
}


def trace(b, heads, kv_heads, ctx, view, d=128):
    with FakeTensorMode():
        pages = b * -(-ctx // 16)
        caches = new_paged_cache(pages, kv_heads, 16, d, torch.bfloat16, device="cuda")
        table = torch.zeros(b, pages // b, dtype=torch.int32, device="cuda")
        q = torch.empty(b, heads, d, dtype=torch.bfloat16, device="cuda")
        lens = torch.empty(b, dtype=torch.int32, device="cuda")
        perm = torch.empty(heads * d, dtype=torch.int32, device="cuda")

    def f(q, kc, vc, km, vm, table, lens, perm):
        out = torch.ops.atom_ao.kv_decode_attention(q, kc, vc, km, vm, table, lens, None, d ** -0.5, ctx)
        return VIEWS[view](out, perm)

    return make_fx(dispatch_functionalize(f), tracing_mode="fake")(q, *caches, table, lens, perm).graph


def reduces(graph):
    return sum(1 for n in graph.nodes if n.op == "call_function" and combine._launches_reduce(n))


def case(b, heads, kv_heads, ctx, view, run=False):
    graph = trace(b, heads, kv_heads, ctx, view)
    found = {"reduces_before": reduces(graph)}
    found["fused"] = passes.run(graph).get("combine_quantize", 0) if run else passes.fuse_combine(graph)
    graph.eliminate_dead_code()
    found["reduces_after"] = reduces(graph)
    found["quantizers_after"] = sum(1 for n in graph.nodes if n.target is passes.QUANTIZE)
    fused = [n for n in graph.nodes if n.target is passes.COMBINE_QUANTIZE]
    if fused:
        part, ml, *rest = fused[0].args
        found["inputs"] = [a.args[1] for a in (part, ml)]
        found["rest"] = [str(a) for a in rest[1:]]
        found["scales_shape"] = list(fused[0].meta["val"][1].shape)
    return found


def main():
    ai.install()  # the quantizer is traced whole while the pass is installed
    results = {}
    for b, heads, kv_heads, ctx in ((1, 32, 32, 1280), (1, 32, 8, 8192), (4, 8, 2, 4096), (64, 32, 8, 64)):
        results[f"layer-{b}-{heads}-{kv_heads}-{ctx}"] = case(b, heads, kv_heads, ctx, "layer")
    results["transformers"] = case(1, 32, 32, 1280, "transformers")
    results["also_read"] = case(1, 32, 32, 1280, "also_read")
    results["reordered"] = case(1, 32, 32, 1280, "reordered")
    passes.FUSE_COMBINE = False
    results["run_off"] = case(1, 32, 32, 1280, "layer", run=True)
    passes.FUSE_COMBINE = True
    results["run_on"] = case(1, 32, 32, 1280, "layer", run=True)
    print("RESULTS " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

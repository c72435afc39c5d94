"""atom_ao.inductor: torch.compile of a quantized transformers Llama decoder layer (CPU, Inductor)
runs the fused quantizers, and only those.

On CPU the atom_ao ops run their references, called from Inductor's generated code as extern
kernels; the generated code is what ``run_and_get_code`` returns, and ``FileCheck`` reads the
op calls in it. The graph checks do not depend on the device: on CUDA the same ops launch the
Triton kernels.
"""

import re

import pytest
import torch
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.utils import run_and_get_code
from torch.testing import FileCheck
from torchao.quantization import quantize_
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

import atom_ao.inductor as ai
from atom_ao import atom_config
from conftest import sqnr

OPS = ("quantize_activation", "rmsnorm_quantize", "silu_mul_quantize")


def _layer(dtype=torch.bfloat16, hidden=256):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=1)
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, 0).eval().to(dtype)
    x = torch.randn(2, 8, hidden, dtype=dtype)
    x[..., :3] *= 60  # a few loud channels, like real hidden states
    pe = LlamaRotaryEmbedding(cfg)(x, torch.arange(8)[None].expand(2, -1))
    return layer, x, pe


def _calls(code: str) -> dict[str, int]:
    return {op: code.count(f"torch.ops.atom_ao.{op}.default(") for op in OPS}


@pytest.fixture(scope="module")
def compiled_layer():
    """One quantized layer compiled with the passes (installed by quantize_) and once without."""
    saved = inductor_config.post_grad_custom_post_pass
    ai.uninstall()
    layer, x, pe = _layer()
    quantize_(layer, atom_config())
    assert ai.is_installed(), "quantize_ with an AtomConfig installs the pass"
    with torch.no_grad():
        eager = layer(x, position_embeddings=pe)[0]
        torch._dynamo.reset()
        out, codes = run_and_get_code(torch.compile(layer, fullgraph=True), x, position_embeddings=pe)
        ai.uninstall()
        torch._dynamo.reset()
        plain, plain_codes = run_and_get_code(torch.compile(layer, fullgraph=True), x, position_embeddings=pe)
    torch._dynamo.reset()
    inductor_config.post_grad_custom_post_pass = saved
    return dict(eager=eager, out=out[0], code="\n".join(codes), plain=plain[0],
                plain_code="\n".join(plain_codes))


@pytest.fixture(autouse=True)
def _restore_inductor_config():
    """Tests below set Inductor config entries directly; restore them afterwards. Not
    ``monkeypatch.setattr``: the config module serves its entries through ``__getattr__``, and
    pytest 9.2 undoes a module attribute missing from the module's ``__dict__`` by deleting it,
    which deletes the config entry for every later test."""
    entries = [(inductor_config, "post_grad_custom_post_pass"), (inductor_config, "fx_graph_cache"),
               (torch._functorch.config, "enable_autograd_cache")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in entries]
    yield
    for mod, name, value in saved:
        setattr(mod, name, value)


def test_fused_ops_in_generated_code(compiled_layer):
    code = compiled_layer["code"]
    # in program order: input_layernorm -> q/k/v (one quantize for all three), o_proj (plain),
    # post_attention_layernorm -> gate/up (one), silu * up -> down_proj
    (FileCheck().check("torch.ops.atom_ao.rmsnorm_quantize.default(")
     .check("torch.ops.atom_ao.quantize_activation.default(")
     .check("torch.ops.atom_ao.rmsnorm_quantize.default(")
     .check("torch.ops.atom_ao.silu_mul_quantize.default(")
     .run(code))
    # quantize launches per layer: 3 fused + o_proj's plain one, instead of 7
    assert _calls(code) == {"quantize_activation": 1, "rmsnorm_quantize": 2, "silu_mul_quantize": 1}


def test_rmsnorm_statistic_comes_from_the_residual_add(compiled_layer):
    """The fused RMSNorm quantizers read the graph's own row statistic (the rstd argument, last),
    and Inductor computes the post-attention one in the kernel of the residual add (one pass
    over the hidden states instead of two)."""
    code = compiled_layer["code"]
    calls = [ln for ln in code.split("\n") if "torch.ops.atom_ao.rmsnorm_quantize.default(" in ln]
    assert len(calls) == 2 and all(ln.rstrip().endswith(", (16, ), (1, ), 0))") for ln in calls), calls
    assert re.search(r"fused_\w*add\w*mean\w*rsqrt", code), "no kernel computing add and rsqrt together"


def test_without_pass_nothing_fused(compiled_layer):
    """Uninstalled, the op is decomposed as before (on CPU: into the reference's aten ops)."""
    assert _calls(compiled_layer["plain_code"]) == {op: 0 for op in OPS}


def test_outputs_match_eager(compiled_layer):
    eager, out, plain = compiled_layer["eager"], compiled_layer["out"], compiled_layer["plain"]
    assert torch.isfinite(out).all()
    # bf16 compiled vs eager differ by rounding (attention, rope), which a 4-bit quantizer
    # amplifies at group boundaries: fused is as close to eager as the unfused compile is
    assert sqnr(eager, out) > 25.0
    assert sqnr(eager, out) > sqnr(eager, plain) - 3.0


def test_unwrapped_weights_fuse_the_same(compiled_layer):
    """After atom_ao.unwrap_weights (AtomLinear: the weights as plain buffers) the compiled layer
    has the same fused quantizers and the same output as with AtomQuantTensor weights."""
    from atom_ao import unwrap_weights

    saved = inductor_config.post_grad_custom_post_pass
    layer, x, pe = _layer()
    quantize_(layer, atom_config())
    unwrap_weights(layer)
    with torch.no_grad():
        torch._dynamo.reset()
        out, codes = run_and_get_code(torch.compile(layer, fullgraph=True), x, position_embeddings=pe)
    torch._dynamo.reset()
    inductor_config.post_grad_custom_post_pass = saved
    assert _calls("\n".join(codes)) == _calls(compiled_layer["code"])
    torch.testing.assert_close(out[0], compiled_layer["out"], rtol=0, atol=0)


class _Recorder(CustomGraphPass):
    def __init__(self):
        self.calls = 0

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return "recorder-v1"


def test_install_chains_is_idempotent_and_uninstalls(monkeypatch):
    inductor_config.post_grad_custom_post_pass = None
    rec = _Recorder()
    inductor_config.post_grad_custom_post_pass = rec
    p = ai.install()
    assert ai.install() is p and p.previous is rec  # chained once, not twice
    assert p.uuid() == ai.AtomFusionPass(rec).uuid() and "recorder-v1" in p.uuid()
    assert ai.AtomFusionPass(lambda g: None).uuid() is None  # a plain callable: no cache key
    ai.uninstall()
    assert inductor_config.post_grad_custom_post_pass is rec


def test_chained_pass_runs_with_fusion(monkeypatch):
    """An existing custom pass still runs, and the fusion happens, in a real compile."""
    inductor_config.post_grad_custom_post_pass = None
    # a cache hit (the uuid at work) would skip both passes: compile for real
    inductor_config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    rec = _Recorder()
    inductor_config.post_grad_custom_post_pass = rec
    norm = torch.nn.RMSNorm(256, eps=1e-5)
    lin = torch.nn.Linear(256, 64, bias=False)
    quantize_(lin, atom_config(n_outliers=64))
    f = lambda x: lin(norm(x))  # noqa: E731  (F.rms_norm: the other RMSNorm form)
    x = torch.randn(4, 256)
    torch._dynamo.reset()
    with torch.no_grad():
        out, (code,) = run_and_get_code(torch.compile(f, fullgraph=True), x)
        torch.testing.assert_close(out, f(x), rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
    assert rec.calls >= 1
    assert _calls(code) == {"quantize_activation": 0, "rmsnorm_quantize": 1, "silu_mul_quantize": 0}


@pytest.mark.parametrize("how", ["config", "env"])
def test_opt_out(monkeypatch, how):
    inductor_config.post_grad_custom_post_pass = None
    if how == "env":
        monkeypatch.setenv(ai.ENV_VAR, "0")
    lin = torch.nn.Linear(256, 8)
    quantize_(lin, atom_config(n_outliers=64, inductor_passes=how != "config"))
    assert inductor_config.post_grad_custom_post_pass is None


@pytest.mark.parametrize("fqn", [False, True])
def test_data_free_linears_sharing_an_input_share_a_permutation(fqn):
    """What dedupe relies on: one permutation for q/k/v and for gate/up (o/down their own),
    through quantize_ and through FqnToConfig."""
    from torchao.quantization import FqnToConfig

    layer, _, _ = _layer(torch.float32)
    cfg = atom_config(inductor_passes=False)
    quantize_(layer, FqnToConfig({r"re:.*_proj": cfg}) if fqn else cfg, **({"filter_fn": None} if fqn else {}))
    a, m = layer.self_attn, layer.mlp
    assert torch.equal(a.q_proj.weight.perm, a.k_proj.weight.perm) and torch.equal(a.q_proj.weight.perm, a.v_proj.weight.perm)
    assert torch.equal(m.gate_proj.weight.perm, m.up_proj.weight.perm)
    assert not torch.equal(a.q_proj.weight.perm, a.o_proj.weight.perm)


def test_asymmetric_layer_fuses_and_keeps_the_flag():
    """act_mapping="asymmetric": the pass still fuses (the fused ops get the flag), and the
    compiled layer matches eager."""
    saved = inductor_config.post_grad_custom_post_pass
    ai.uninstall()
    layer, x, pe = _layer()
    quantize_(layer, atom_config(act_mapping="asymmetric"))
    with torch.no_grad():
        eager = layer(x, position_embeddings=pe)[0]
        torch._dynamo.reset()
        out, codes = run_and_get_code(torch.compile(layer, fullgraph=True), x, position_embeddings=pe)
    torch._dynamo.reset()
    ai.uninstall()
    inductor_config.post_grad_custom_post_pass = saved
    code = "\n".join(codes)
    assert _calls(code) == {"quantize_activation": 1, "rmsnorm_quantize": 2, "silu_mul_quantize": 1}
    FileCheck().check("torch.ops.atom_ao.rmsnorm_quantize.default(").check(", True, True, reinterpret_tensor(").run(code)
    assert sqnr(eager, out[0]) > 25.0


class _TwoOnOneInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = torch.nn.Linear(256, 256, bias=False), torch.nn.Linear(256, 256, bias=False)

    def forward(self, x):
        return self.q(x) + self.k(x)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("unwrapped", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_dedupe_only_merges_quantizers_of_one_permutation(shared, unwrapped, device):
    """Two linears on one input are quantized once only when their weights hold the same
    permutation tensor (atom_ao's flows share it); weights built with different permutations
    (``AtomQuantTensor.from_hp``) keep a quantizer each, instead of one giving k q's codes."""
    from atom_ao import unwrap_weights
    from atom_ao.inductor.passes import LAST_COUNTS
    from conftest import outlier_activations, quantize_with_permutations, two_permutations

    torch.manual_seed(0)
    model = _TwoOnOneInput()
    x, _ = outlier_activations(16, 256, n_outlier_channels=4)
    p_q, other = two_permutations()
    quantize_with_permutations([model.q, model.k], [p_q, p_q if shared else other])
    model, x = model.to(device), x.to(device)
    if unwrapped:
        unwrap_weights(model)
    saved = inductor_config.post_grad_custom_post_pass
    ai.install()
    inductor_config.fx_graph_cache = False  # run the pass (and count) even when the graph was cached
    torch._functorch.config.enable_autograd_cache = False
    try:
        with torch.no_grad():
            eager = model(x)
            torch._dynamo.reset()
            compiled = torch.compile(model, fullgraph=True)(x)
    finally:
        torch._dynamo.reset()
        inductor_config.post_grad_custom_post_pass = saved
    assert LAST_COUNTS["deduped"] == (1 if shared else 0)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)


def test_producer_fusion_switch_keeps_dedupe(monkeypatch):
    """``ATOM_AO_FUSE_PRODUCERS=0``: q/k/v still share one quantizer, but nothing is fused into
    its producer (the decode-step A/B of ``gpu_check.sh fuse-ab-s25``); the cache key changes."""
    from atom_ao.inductor import passes

    saved = inductor_config.post_grad_custom_post_pass
    inductor_config.fx_graph_cache = False  # compile for real (the fixture restores both)
    torch._functorch.config.enable_autograd_cache = False
    ai.uninstall()
    layer, x, pe = _layer()
    quantize_(layer, atom_config())
    on = inductor_config.post_grad_custom_post_pass.uuid()
    monkeypatch.setenv(passes.FUSE_ENV_VAR, "0")
    assert inductor_config.post_grad_custom_post_pass.uuid() != on
    with torch.no_grad():
        torch._dynamo.reset()
        out, codes = run_and_get_code(torch.compile(layer, fullgraph=True), x, position_embeddings=pe)
    torch._dynamo.reset()
    ai.uninstall()
    inductor_config.post_grad_custom_post_pass = saved
    # 4 plain quantizers: q/k/v share one and gate/up one (7 without the dedupe), none fused
    assert _calls("\n".join(codes)) == {"quantize_activation": 4, "rmsnorm_quantize": 0, "silu_mul_quantize": 0}
    assert sqnr(layer(x, position_embeddings=pe)[0], out[0]) > 25.0

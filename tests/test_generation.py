"""atom_ao.generate (greedy decoding with one compiled step, no generate loop) against
transformers' own greedy ``generate`` with the same cache: the same tokens, float and Atom
weights, StaticCache and the INT4 cache, compiled or not (CPU: the references, plain Inductor)."""

import functools

import pytest
import torch
from torchao.quantization import quantize_

import atom_ao
from atom_ao.__main__ import _generate
from atom_ao.eval.methods import decoder_linears
from test_handler import tiny_llama


def _model(quantized: bool):
    model = tiny_llama(layers=2)
    if quantized:
        quantize_(model, atom_ao.atom_config(), filter_fn=decoder_linears)
        atom_ao.unwrap_weights(model)
    return model


@pytest.mark.parametrize("kv4", [False, True])
@pytest.mark.parametrize("quantized", [False, True])
def test_same_tokens_as_transformers_generate(kv4, quantized):
    model = _model(quantized)
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expect = _generate(model, ids, kv4, max_cache_len=ids.shape[1] + 6, do_sample=False, max_new_tokens=6,
                           min_new_tokens=6)
    eager = atom_ao.generate(model, ids, 6, kv4=kv4, compile=False)
    assert torch.equal(eager, expect)
    assert model.config._attn_implementation != "atom_int4"  # switched back after the INT4 cache
    torch._dynamo.reset()
    compiled = atom_ao.generate(model, ids, 6, kv4=kv4)
    # Inductor may round the elementwise parts differently: allow a late divergence only
    assert torch.equal(compiled[:, :ids.shape[1] + 3], expect[:, :ids.shape[1] + 3])


def test_a_cache_of_ones_own():
    # an AtomKVCache with other options than make_cache's (here without the Hadamard rotation):
    # the tokens of transformers' generate with that cache; the attention switch stays the caller's
    from atom_ao.kv import AtomKVCache, with_cache

    model = _model(quantized=True)
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(4))
    impl = model.config._attn_implementation
    with torch.no_grad():
        expect = model.generate(ids, **with_cache(model, AtomKVCache(model, max_cache_len=13, rotate=False)),
                                do_sample=False, max_new_tokens=6, min_new_tokens=6)
    got = atom_ao.generate(model, ids, 6, cache=AtomKVCache(model, max_cache_len=13, rotate=False), compile=False)
    assert torch.equal(got, expect)
    assert model.config._attn_implementation == "atom_int4"
    model.set_attn_implementation(impl)


def test_a_cache_of_ones_own_is_checked():
    from transformers import DynamicCache

    from atom_ao.kv import AtomKVCache

    model = _model(quantized=False)
    ids = torch.randint(0, 512, (1, 5))
    with pytest.raises(ValueError, match="not both"):
        atom_ao.generate(model, ids, 4, kv4=True, cache=AtomKVCache(model, max_cache_len=9))
    with pytest.raises(ValueError, match="AtomKVCache or a StaticCache, got DynamicCache"):
        atom_ao.generate(model, ids, 4, cache=DynamicCache(), compile=False)
    with pytest.raises(ValueError, match="holds 8 tokens, the prompt and new tokens 9"):
        atom_ao.generate(model, ids, 4, cache=AtomKVCache(model, max_cache_len=8), compile=False)
    with pytest.raises(ValueError, match="needs a static cache"):
        atom_ao.generate(model, ids, 4, cache=AtomKVCache(model))


def test_compiles_the_decode_step_once():
    from torch._dynamo.utils import counters

    model = _model(quantized=True)
    torch._dynamo.reset()
    counters.clear()
    for n in (8, 6):  # a second call (a fresh cache, another length) reuses the compiled step
        out = atom_ao.generate(model, torch.randint(0, 512, (1, 5)), n, kv4=True, max_cache_len=16)
        assert out.shape == (1, 5 + n)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_a_model_changed_between_calls_is_compiled_again():
    # a model changed between calls (here its Atom weights wrapped back into nn.Linear) is traced
    # again, not run through the graph of the old one
    from torch._dynamo.utils import counters

    model = _model(quantized=True)
    ids = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(3))
    expect = atom_ao.generate(model, ids, 8, compile=False)
    torch._dynamo.reset()
    counters.clear()
    assert torch.equal(atom_ao.generate(model, ids, 8)[:, :8], expect[:, :8])
    atom_ao.wrap_weights(model)
    assert torch.equal(atom_ao.generate(model, ids, 8)[:, :8], expect[:, :8])
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_the_captured_loop_on_a_stand_in_graph(monkeypatch):
    # capture=True's loop (two compiled steps, then replays of one recorded step that writes the
    # token and moves the position on the device) with a stand-in whose replay() runs the step:
    # the CPU checks the bookkeeping, the GPU test the real CUDA graph
    from types import SimpleNamespace

    from atom_ao import generation

    captured = []
    monkeypatch.setattr(generation, "_use_capture", lambda capture, device, compile: bool(capture))
    monkeypatch.setattr(generation, "_capture", lambda step: captured.append(step) or SimpleNamespace(replay=step))
    model = _model(quantized=True)
    ids = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(5))
    torch._dynamo.reset()
    expect = atom_ao.generate(model, ids, 9, kv4=True)
    assert not captured
    assert torch.equal(atom_ao.generate(model, ids, 9, kv4=True, capture=True), expect)
    assert len(captured) == 1


def test_a_stance_set_by_the_caller_is_kept():
    # a caller's force_eager stance is kept: nothing compiled
    from torch._dynamo.utils import counters

    model = _model(quantized=False)
    ids = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(6))
    torch._dynamo.reset()
    counters.clear()
    with torch.compiler.set_stance("force_eager"):
        out = atom_ao.generate(model, ids, 6)
    assert counters["stats"]["unique_graphs"] == 0, dict(counters["stats"])
    assert torch.equal(out, atom_ao.generate(model, ids, 6, compile=False))


def test_stops_at_eos_and_checks_its_input():
    model = _model(quantized=False)
    ids = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(2))
    full = atom_ao.generate(model, ids, 12, compile=False)
    eos = int(full[0, 6])  # the second new token
    stopped = atom_ao.generate(model, ids, 12, compile=False, eos_token_id=eos, eos_check_every=2)
    assert stopped.shape[1] == 5 + 2 and torch.equal(stopped, full[:, :7])
    either = atom_ao.generate(model, ids, 12, compile=False, eos_token_id=[int(full[0, 10]), eos], eos_check_every=2)
    assert torch.equal(either, stopped)  # a list of ids: the first of them to appear stops
    with pytest.raises(ValueError, match="input_ids must be"):
        atom_ao.generate(model, ids.float(), 4)
    with pytest.raises(ValueError, match="max_cache_len 8 < prompt"):
        atom_ao.generate(model, ids, 4, max_cache_len=8)
    with pytest.raises(ValueError, match="max_new_tokens"):
        atom_ao.generate(model, ids, 0)
    with pytest.raises(ValueError, match="eos_check_every"):
        atom_ao.generate(model, ids, 4, eos_token_id=eos, eos_check_every=0)
    with pytest.raises(ValueError, match="capture=True .* needs a CUDA model"):
        atom_ao.generate(model, ids, 4, capture=True)


def test_capture_is_the_default_for_a_compiled_cuda_step_only():
    from atom_ao.generation import _use_capture

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _use_capture(None, cuda, True) and not _use_capture(None, cuda, False)
    assert not _use_capture(None, cpu, True) and not _use_capture(False, cuda, True)
    with pytest.raises(ValueError, match="compile=True"):
        _use_capture(True, cuda, False)


def _hf(model, ids, kv4, cache_len=None, **kw):
    """transformers' greedy generate, with the INT4 cache (cache_len tokens; None: growing) when kv4."""
    return _generate(model, ids, kv4, max_cache_len=cache_len if kv4 else None, do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("kv4", [False, True])
@pytest.mark.parametrize("compile", [False, True])
def test_decoding_hook_gives_the_tokens_of_generate(kv4, compile):
    # model.generate(custom_generate=atom_ao.greedy_decoding): generate's own preparation, atom_ao's
    # loop; with the cache the caller passes (INT4) or generate's default (replaced by a StaticCache)
    model = _model(quantized=True)
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(11))
    hook = functools.partial(atom_ao.greedy_decoding, compile=compile)
    expect = _hf(model, ids, kv4, cache_len=13, max_new_tokens=6)
    torch._dynamo.reset()
    got = _hf(model, ids, kv4, cache_len=13, max_new_tokens=6, custom_generate=hook)
    n = ids.shape[1] + (3 if compile else 6)  # compiled: a late divergence allowed, as above
    assert got.shape == expect.shape and torch.equal(got[:, :n], expect[:, :n])


def test_decoding_hook_pads_finished_sequences_as_generate_does():
    model = _model(quantized=False)
    ids = torch.randint(0, 512, (3, 5), generator=torch.Generator().manual_seed(12))
    full = _hf(model, ids, False, max_new_tokens=10)
    hook = functools.partial(atom_ao.greedy_decoding, compile=False, eos_check_every=3)
    for eos in (int(full[0, 7]), int(full[1, 5]), [int(full[0, 9]), int(full[2, 6])]):
        expect = _hf(model, ids, False, max_new_tokens=10, eos_token_id=eos)
        got = _hf(model, ids, False, max_new_tokens=10, eos_token_id=eos, custom_generate=hook)
        assert torch.equal(got, expect), (eos, got, expect)


def test_decoding_hook_refuses_what_it_does_not_do():
    model = _model(quantized=False)
    ids = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(13))
    hook = functools.partial(atom_ao.greedy_decoding, compile=False)
    for kw, what in ((dict(do_sample=True), "do_sample"), (dict(repetition_penalty=1.3), "RepetitionPenalty"),
                     (dict(num_beams=2), "num_beams"), (dict(return_dict_in_generate=True), "return_dict"),
                     (dict(attention_mask=torch.tensor([[0, 1, 1, 1, 1]])), "padded prompt"),
                     (dict(max_time=10.0), "MaxTimeCriteria")):
        with pytest.raises(ValueError, match=what):
            with torch.no_grad():
                model.generate(ids, max_new_tokens=4, pad_token_id=0, custom_generate=hook,
                               **{"do_sample": False, **kw})
    with pytest.raises(ValueError, match="static cache"):
        _hf(model, ids, True, cache_len=None, max_new_tokens=4, custom_generate=atom_ao.greedy_decoding)
    with pytest.raises(ValueError, match="holds 6 tokens"):
        _hf(model, ids, True, cache_len=6, max_new_tokens=4, custom_generate=hook)
    with pytest.raises(ValueError, match="eos_check_every"):
        _hf(model, ids, False, max_new_tokens=4, custom_generate=functools.partial(hook, eos_check_every=0))
    from transformers import DynamicCache

    from atom_ao.kv import with_cache

    used = with_cache(model, DynamicCache(config=model.config))  # {keyword: cache} for this transformers
    with torch.no_grad():
        model(ids, use_cache=True, **used)
    with pytest.raises(ValueError, match="already holds tokens"):
        with torch.no_grad():
            model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, custom_generate=hook, **used)


@pytest.mark.gpu
@pytest.mark.parametrize("kv4", [False, True])
def test_gpu_cuda_graph_step_matches_transformers_generate(kv4):
    model = _model(quantized=True).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        expect = _generate(model, ids, kv4, max_cache_len=ids.shape[1] + 8, do_sample=False, max_new_tokens=8,
                           min_new_tokens=8)
    torch._dynamo.reset()
    for capture in (False, False, None):  # the second call replays the recorded CUDA graph; None: captured
        out = atom_ao.generate(model, ids, 8, kv4=kv4, capture=capture)
        assert torch.equal(out[:, :ids.shape[1] + 3], expect[:, :ids.shape[1] + 3])


@pytest.mark.gpu
@pytest.mark.parametrize("kv4", [False, True])
def test_gpu_captured_step_gives_the_tokens_of_the_compiled_step(kv4):
    # capture=True: two compiled steps, then one step recorded in atom_ao's own CUDA graph and
    # replayed; the same tokens as the reduce-overhead path, stopping at EOS as it does
    model = _model(quantized=True).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(4)).cuda()
    torch._dynamo.reset()
    expect = atom_ao.generate(model, ids, 12, kv4=kv4, capture=False)
    for _ in range(2):  # a second call captures a new graph with a fresh cache
        assert torch.equal(atom_ao.generate(model, ids, 12, kv4=kv4, capture=True), expect)
    full = atom_ao.generate(model, ids[:1], 12, kv4=kv4, capture=False)
    eos = int(full[0, ids.shape[1] + 5])
    stopped = atom_ao.generate(model, ids[:1], 12, kv4=kv4, capture=True, eos_token_id=eos, eos_check_every=2)
    first = int((full[0, ids.shape[1]:] == eos).nonzero()[0]) + 1  # new tokens up to the first EOS
    assert stopped.shape[1] == ids.shape[1] + first + (first % 2) and torch.equal(stopped, full[:, :stopped.shape[1]])


@pytest.mark.gpu
@pytest.mark.parametrize("kv4", [False, True])
def test_gpu_decoding_hook_gives_the_tokens_of_generate(kv4):
    # on CUDA the hook's loop replays its own CUDA graph of the step (capture, the default)
    model = _model(quantized=True).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(14)).cuda()
    expect = _hf(model, ids, kv4, cache_len=21, max_new_tokens=12)
    torch._dynamo.reset()
    for _ in range(2):  # a second call records a new graph with a fresh cache
        got = _hf(model, ids, kv4, cache_len=21, max_new_tokens=12, custom_generate=atom_ao.greedy_decoding)
        assert torch.equal(got[:, :ids.shape[1] + 3], expect[:, :ids.shape[1] + 3])

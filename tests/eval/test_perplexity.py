"""perplexity() against exp(mean NLL) computed by hand, on real tokens of the held-out wiki text."""

import math

import pytest
import torch
import torch.nn.functional as F

from atom_ao import data
from atom_ao.eval.perplexity import perplexity

SEQ = 128


@pytest.fixture(scope="module")
def tokens():
    from transformers import AutoTokenizer

    path = data.gguf_path("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return data.eval_tokens(tok, "wiki")[:, :SEQ + 6 * 64 + 10]  # 522: 4 full windows of 128 + a tail


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    return LlamaForCausalLM(cfg).eval()


def test_non_overlapping_equals_hand_computed(model, tokens):
    ids = tokens[0]
    nlls = []
    for s in range(0, ids.numel() - SEQ + 1, SEQ):  # 4 windows, the 10-token tail unused
        w = ids[s:s + SEQ]
        with torch.no_grad():
            logp = model(w[None]).logits[0].log_softmax(-1)
        nlls.append(-logp[:-1].gather(1, w[1:, None]).squeeze(1))  # all but the first token
    nll = torch.cat(nlls).double()
    assert nll.numel() == 4 * (SEQ - 1)
    expected = math.exp(nll.mean().item())
    got = perplexity(model, tokens, seq_len=SEQ, progress=False)
    assert got == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, tokens, seq_len=SEQ, stride=SEQ, progress=False) == got
    # max_windows keeps the first windows only
    first_two = math.exp(torch.cat(nlls[:2]).double().mean().item())
    assert perplexity(model, tokens, seq_len=SEQ, max_windows=2, progress=False) == pytest.approx(first_two, rel=1e-6)


def test_strided_equals_hf_loss_with_masked_labels(model, tokens):
    # HF's strided recipe: window [begin, begin + SEQ), labels of all but the last `stride`
    # tokens set to -100 (the first window: all scored), the model's own loss averaged over them
    stride, ids = 64, tokens[:, :SEQ + 6 * 64]  # windows fit exactly: 7 of them
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1] - SEQ + 1, stride):
        end = begin + SEQ
        w = ids[:, begin:end]
        labels = w.clone()
        labels[:, :-(end - prev_end)] = -100
        n = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one
        with torch.no_grad():
            loss = model(w, labels=labels).loss
        total += loss.double().item() * n
        count += n
        prev_end = end
    assert count == ids.shape[1] - 1  # every token after the very first scored exactly once
    got = perplexity(model, ids, seq_len=SEQ, stride=stride, progress=False)
    assert got == pytest.approx(math.exp(total / count), rel=1e-5)


def test_rejects_bad_stride(model, tokens):
    with pytest.raises(ValueError):
        perplexity(model, tokens, seq_len=SEQ, stride=SEQ + 1, progress=False)


@pytest.mark.slow
def test_smollm2_held_out_wiki_perplexity():
    model, tok = data.load_model("smollm2-135m")
    ppl = perplexity(model, data.eval_tokens(tok, "wiki"), seq_len=512, max_windows=4, progress=False)
    assert math.isfinite(ppl) and 1 < ppl < 60

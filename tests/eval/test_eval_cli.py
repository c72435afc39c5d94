"""The evaluation entry point (python -m atom_ao.eval) and its zero-shot scorer, on tiny slices."""

import json
import math

import pytest
import torch

from atom_ao import data
from atom_ao.eval import zeroshot


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = data.gguf_path("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def test_task_files_load():
    docs = zeroshot.load_task("arc_easy", limit=5)
    assert len(docs) == 5
    for d in docs:
        assert len(d["requests"]) >= 2 and 0 <= d["label"] < len(d["requests"])
        contexts = {c for c, _ in d["requests"]}
        assert len(contexts) == 1  # arc: one question, several continuations
    wino = zeroshot.load_task("winogrande", limit=2)
    assert all(len({c for c, _ in d["requests"]}) == 2 for d in wino)  # the context varies instead


def test_encode_moves_the_trailing_space(tokenizer):
    ctx, cont = zeroshot._encode(tokenizer, "Question: x?\nAnswer: ", "blue")
    ctx2, cont2 = zeroshot._encode(tokenizer, "Question: x?\nAnswer:", " blue")
    assert (ctx, cont) == (ctx2, cont2)
    assert tokenizer.decode(cont) == " blue"


def test_batched_loglikelihoods_equal_one_at_a_time(tiny_model, tokenizer):
    docs = zeroshot.load_task("piqa", limit=3) + zeroshot.load_task("hellaswag", limit=2)
    reqs = [r for d in docs for r in d["requests"]]
    batched = zeroshot.loglikelihoods(tiny_model, tokenizer, reqs, batch_size=8, progress=False)
    for (ctx, cont), got in zip(reqs, batched):
        c, x = zeroshot._encode(tokenizer, ctx, cont)
        ids = torch.tensor([c + x])
        with torch.no_grad():
            logp = tiny_model(ids).logits[0, :-1].log_softmax(-1)
        want = logp[-len(x):].gather(1, ids[0, -len(x):, None]).sum().item()
        assert got == pytest.approx(want, abs=1e-3)


@pytest.mark.slow
def test_cli_on_a_tiny_slice(tmp_path, capsys):
    from atom_ao.eval.__main__ import main

    out = tmp_path / "r.json"
    res = main(["--model", "smollm2", "--methods", "float,float-kv4,naive-w4a4", "--corpora", "wiki,c4",
                "--windows", "1", "--seq-len", "64", "--tasks", "piqa,arc_easy", "--limit", "3",
                "--simulate", "zero-shot", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| method | ppl_wiki | ppl_c4 | piqa | arc_easy | zs_avg | quant_s |" in printed
    saved = json.loads(out.read_text())
    assert [r["key"] for r in saved["rows"]] == ["float", "float-kv4", "naive-w4a4"]
    assert saved["perplexity"]["seq_len"] == 64 and saved["perplexity"]["stride"] == 64
    for r in res["rows"]:
        assert math.isfinite(r["ppl_wiki"]) and math.isfinite(r["ppl_c4"])
        for z in r["zero_shot"].values():
            assert z["n"] == 3 and 0 <= z["acc"] <= 1 and 0 <= z["acc_norm"] <= 1
    # the INT4 KV cache and W4A4 cost perplexity; the float row is the reference
    rows = {r["key"]: r for r in res["rows"]}
    assert rows["float"]["delta_wiki"] == 0
    assert rows["naive-w4a4"]["ppl_wiki"] > rows["float"]["ppl_wiki"]


@pytest.mark.slow
def test_accuracy_table_script_on_a_tiny_slice(tmp_path, monkeypatch, capsys):
    """benchmarks/accuracy_table.py (the README's table): rows, zero-shot only for --zs-methods,
    the JSON + markdown files with the command in them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import accuracy_table

    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    argv = ["--methods", "float,naive-w4a4", "--zs-methods", "float", "--corpora", "wiki", "--windows", "1",
            "--seq-len", "64", "--tasks", "boolq", "--limit", "2", "--tag", "_tiny", "--no-progress"]
    res = accuracy_table.main(argv)
    rows = {r["key"]: r for r in res["rows"]}
    assert set(rows) == {"float", "naive-w4a4"}
    assert rows["float"]["zero_shot"]["boolq"]["n"] == 2 and "zero_shot" not in rows["naive-w4a4"]
    assert rows["naive-w4a4"]["ppl_wiki"] > rows["float"]["ppl_wiki"] and rows["naive-w4a4"]["quant_s"] > 0
    md = (tmp_path / "accuracy_table_smollm2-135m_tiny_cpu.md").read_text()
    assert "python benchmarks/accuracy_table.py --methods float,naive-w4a4" in md
    assert "| boolq | avg |" in md
    saved = json.loads((tmp_path / "accuracy_table_smollm2-135m_tiny_cpu.json").read_text())
    assert saved["perplexity"]["seq_len"] == 64 and len(saved["rows"]) == 2

"""Real text, the calibration / evaluation split of wiki, and token batches (SmolLM2's tokenizer)."""

import pytest
import torch

from atom_ao import data


@pytest.fixture(scope="module")
def tok():
    # only the tokenizer of the GGUF (a few seconds), not the model
    from transformers import AutoTokenizer

    path = data.gguf_path("smollm2-135m")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _long_lines(text, n=200):
    # long paragraphs are unique to their article: a content-level fingerprint of the split
    return {line for line in text.splitlines() if len(line) >= n}


def test_package_dir_finds_without_importing():
    assert (data.package_dir("exllamav2") / "conversion" / "standard_cal_data" / "wiki.utf8").is_file()
    assert data.package_dir("surely_not_an_installed_package_xyz") is None


def test_failed_install_says_what_to_do_offline(monkeypatch):
    # the GPU machine reaches no package index: the error must name the ways around it
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: No matching distribution found for surely-not-a-package-xyz==1.0"))
    with pytest.raises(RuntimeError, match=r"(?s)No matching distribution.*Offline\?.*surely_not_a_package_xyz.*--model PATH"):
        data.ensure_package("surely-not-a-package-xyz", "1.0")


def test_texts_load_and_wiki_markers_are_stripped():
    wiki, c4 = data.load_text("wiki"), data.load_text("c4")
    assert len(wiki) > 1_500_000 and len(c4) > 300_000
    assert "<doc" not in wiki and "</doc>" not in wiki
    assert wiki.lstrip().startswith("2007 European Parliament election in Romania")  # first article's title
    with pytest.raises(ValueError):
        data.load_text("nope")


def test_wiki_split_is_disjoint_covering_and_deterministic():
    calib, held_out = data.wiki_split()
    assert "<doc" not in calib + held_out and "</doc>" not in calib + held_out
    assert 0.78 < len(calib) / (len(calib) + len(held_out)) < 0.82  # 80% of characters, article cut
    c, e, full = _long_lines(calib), _long_lines(held_out), _long_lines(data.load_text("wiki"))
    assert len(e) > 100
    assert not c & e  # no article text in both parts
    assert c | e == full  # and no article lost
    data.wiki_split.cache_clear()
    assert data.wiki_split() == (calib, held_out)


def test_calibration_batches(tok):
    b = data.calibration_batches(tok, n_samples=4, seq_len=256, seed=0)
    assert b.shape == (4, 256) and b.dtype == torch.long
    assert 0 <= int(b.min()) and int(b.max()) < len(tok)
    assert torch.equal(b, data.calibration_batches(tok, n_samples=4, seq_len=256, seed=0))
    assert not torch.equal(b, data.calibration_batches(tok, n_samples=4, seq_len=256, seed=1))
    # the windows are real text from the calibration part, never from the held-out part
    calib, held_out = data.wiki_split()
    for row in b:
        text = tok.decode(row[8:-8])
        assert text in calib and text not in held_out


def test_eval_tokens_are_the_held_out_text(tok):
    ids = data.eval_tokens(tok, "wiki")
    assert ids.dim() == 2 and ids.shape[0] == 1 and ids.shape[1] > 50_000 and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < len(tok)
    held_out = data.wiki_split()[1]
    assert held_out.startswith(tok.decode(ids[0, :300]))
    c4 = data.eval_tokens(tok, "c4")
    assert c4.shape[1] > 50_000 and data.load_text("c4").startswith(tok.decode(c4[0, :300]))

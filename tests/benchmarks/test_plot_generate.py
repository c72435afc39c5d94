"""benchmarks/plot_generate.py: merging generate runs (later rows win) and refusing mixed inputs."""

import json

import pytest

import cpu_smoke  # noqa: F401  (benchmarks on the path)
import plot_generate


def _run(tmp_path, name, gpu, rows, **meta):
    p = tmp_path / name
    p.write_text(json.dumps({"meta": {"gpu": gpu, **meta}, "rows": rows}))
    return str(p)


def _row(path, batch, tpot, model="llama2-7b", ratio=None, fit=None):
    row = {"model": model, "path": path, "batch": batch, "tpot_ms": tpot, "tokens_per_s": batch * 1e3 / tpot,
           "prefill_ms": 10.0, "peak_gb": 1.0, "speedup_vs_bf16": ratio}
    return row if fit is None else {**row, "max_batch_80gb": fit}


def test_merge_later_rows_win_and_table_lists_each_run(tmp_path):
    a = _run(tmp_path, "a.json", "H200", [_row("bf16", 1, 5.0, ratio=1.0), _row("atom-kv4", 1, 4.0, ratio=1.25)])
    b = _run(tmp_path, "b.json", "H200", [_row("atom-kv4", 1, 3.8), _row("atom-kv4", 8, 4.4)])
    rows, gpus = plot_generate.merge([a, b])
    assert [(r["path"], r["batch"], r["tpot_ms"], r["file"]) for r in rows] == [
        ("atom-kv4", 1, 3.8, "b.json"), ("atom-kv4", 8, 4.4, "b.json"), ("bf16", 1, 5.0, "a.json")]
    assert gpus == ["H200 (unfused)", "H200 (unfused)"]
    md = plot_generate.table(rows)
    assert "| atom-kv4 | 8 | 4.40 | 1818 | - |" in md and "| bf16 | 1 | 5.00 | 200 | 1.00x |" in md


def test_table_states_the_fixed_memory_batch(tmp_path):
    a = _run(tmp_path, "a.json", "H200", [_row("bf16", 64, 13.9, ratio=1.0, fit=95), _row("atom-kv4", 64, 6.5, fit=408)])
    md = plot_generate.table(plot_generate.merge([a])[0])
    assert "largest batch in 80 GB" in md
    assert "| 1.0 | 408 | a.json |" in md and "| 1.0 | 95 | a.json |" in md


def test_mixed_models_or_gpus_are_refused(tmp_path):
    a = _run(tmp_path, "a.json", "H200", [_row("bf16", 1, 5.0)])
    b = _run(tmp_path, "b.json", "H100", [_row("bf16", 8, 6.0)])
    with pytest.raises(SystemExit, match="one model, GPU and model form"):
        plot_generate.main([a, b, "--out", str(tmp_path / "x")])


def test_fused_and_unfused_runs_are_refused(tmp_path):
    # bench_generate fuses q/k/v and gate/up by default since session 25; older files have neither key
    a = _run(tmp_path, "a.json", "H200", [_row("bf16", 1, 5.0)])
    b = _run(tmp_path, "b.json", "H200", [_row("bf16", 8, 6.0)], fused_qkv=True, fused_gate_up=True)
    with pytest.raises(SystemExit, match="fused_qkv\\+fused_gate_up"):
        plot_generate.main([a, b, "--out", str(tmp_path / "x")])

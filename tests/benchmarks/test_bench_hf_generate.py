"""CPU smoke test of benchmarks/bench_hf_generate.py: one decoder layer through transformers'
generate (compiled on the CPU too, no CUDA graphs), bf16 -> Atom -> Atom + INT4 KV, and the results
file it writes."""

import json

import cpu_smoke  # noqa: F401  (puts benchmarks/ on the path)
import pytest

pytest.importorskip("torchao")
import bench_hf_generate  # noqa: E402


def test_bench_hf_generate_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    monkeypatch.setattr(bench_hf_generate, "DEVICE", "cpu")
    rows = bench_hf_generate.main(["--layers", "1", "--prompt", "4", "--short", "1", "--long", "3", "--profile",
                                   "--paths", "bf16,atom,atom-kv4", "--skip-module-guards"])
    assert [r["path"] for r in rows] == ["bf16", "atom", "atom-kv4"]
    assert not any(r["module_guards"] for r in rows)
    assert "TorchDynamo Cache Lookup" in (tmp_path / "bench_hf_generate_transformers_atom-kv4_profile.txt").read_text()
    assert all(r["decode_ms"] != 0 and r["layers"] == 1 for r in rows)
    saved = json.loads(next(tmp_path.glob("bench_hf_generate_smollm2-135m_*.json")).read_text())
    assert [r["path"] for r in saved["rows"]] == ["bf16", "atom", "atom-kv4"]
    assert saved["rows"][0]["speedup_vs_bf16"] == 1.0
    assert all(r["guards_us"] > 0 and r["wrapper_us"] >= 0 for r in rows)  # the compiled step's CPU split
    assert all(r["timeline_us_per_token"] == {"total": 0.0, "idle": 0.0, "top": []} for r in rows)  # no GPU kernels


def test_bench_hf_generate_unwrapped_and_freezing_cpu(tmp_path, monkeypatch):
    # unwrapped weights (and back), under Inductor freezing, through transformers' compiled generate
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    monkeypatch.setattr(bench_hf_generate, "DEVICE", "cpu")
    rows = bench_hf_generate.main(["--layers", "1", "--prompt", "4", "--short", "1", "--long", "2",
                                   "--paths", "atom-unwrapped,atom-kv4-fused,atom-kv4-unwrapped,atom", "--freezing"])
    assert [(r["path"], r["freezing"]) for r in rows] == [("atom-unwrapped", True), ("atom-kv4-fused", True),
                                                          ("atom-kv4-unwrapped", True), ("atom", True)]


def test_bench_hf_generate_refuses_bad_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    monkeypatch.setattr(bench_hf_generate, "DEVICE", "cpu")
    with pytest.raises(SystemExit, match="bf16 must come before"):
        bench_hf_generate.main(["--layers", "1", "--prompt", "4", "--short", "1", "--long", "2", "--paths", "atom,bf16"])
    with pytest.raises(SystemExit, match="unknown path 'atom-kv8'"):
        bench_hf_generate.main(["--layers", "1", "--paths", "atom-kv8"])


def test_bench_hf_generate_atom_ao_generators_side_by_side_cpu(tmp_path, monkeypatch):
    # the same paths timed through atom_ao.generate (one compiled step, no generate loop) and through
    # transformers' generate with that loop as its custom_generate hook, in one run: same tokens, all of them
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    monkeypatch.setattr(bench_hf_generate, "DEVICE", "cpu")
    rows = bench_hf_generate.main(["--layers", "1", "--prompt", "4", "--short", "1", "--long", "3",
                                   "--paths", "bf16,atom-kv4-unwrapped,atom-kv4-plain-unwrapped",
                                   "--generator", "atom_ao,transformers_hook,transformers"])
    gens = ["atom_ao", "transformers_hook", "transformers"]
    assert [(r["generator"], r["path"]) for r in rows] == [
        (g, p) for p in ("bf16", "atom-kv4-unwrapped", "atom-kv4-plain-unwrapped") for g in gens]
    assert all(r["decode_ms"] != 0 and r["new_tokens"] == 3 and r["same_tokens_as_first"] for r in rows)
    assert all(r["speedup_vs_bf16"] for r in rows)  # each against bf16 through its own generator
    with pytest.raises(SystemExit, match="unknown generator"):
        bench_hf_generate.main(["--layers", "1", "--generator", "atom_ao,hf"])

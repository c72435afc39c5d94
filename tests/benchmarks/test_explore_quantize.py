"""explore_quantize's table on CPU (Triton's interpreter, tiny sizes): both kernels of the three
quantizers run and agree with the reference, the per-config rows appear above 32 rows, files
are written."""

from cpu_smoke import run_on_cpu  # also puts benchmarks/ on the path
import explore_quantize  # noqa: E402


def test_cpu_smoke(tmp_path, monkeypatch):
    out = run_on_cpu(explore_quantize, ["--ms", "3,40", "--ks", "384"], "explore_quantize", tmp_path, monkeypatch)
    rows = out["rows"]
    assert out["meta"]["mismatches"] == []
    names = {r["config"] for r in rows}
    for op in ("quantize_activation", "rmsnorm_quantize", "silu_mul_quantize"):
        assert f"{op}, stream kernel" in names and f"{op}, tile kernel" in names
    assert any(r["M"] == 40 and r["config"].startswith("quantize_activation ") and " progs " in r["config"] for r in rows)
    assert not any(r["M"] == 3 and " progs " in r["config"] for r in rows)
    assert all(r["us"] > 0 for r in rows)

"""explore_quantize's table on CPU (Triton's interpreter, tiny sizes): both kernel layouts of the
three quantizers run and agree, the per-config rows appear above 32 rows, files are written."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import explore_quantize  # noqa: E402


def test_cpu_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))

    def wall_us(fn, use_graph=True):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6

    monkeypatch.setattr(explore_quantize, "DEVICE", "cpu")
    monkeypatch.setattr(explore_quantize, "bench_us", wall_us)
    monkeypatch.setattr(explore_quantize, "measured_copy_bytes_per_s", lambda: 1e12)
    monkeypatch.setattr(sys, "argv", ["explore_quantize", "--ms", "3,40", "--ks", "384"])
    explore_quantize.main()
    rows = json.loads(next(tmp_path.glob("explore_quantize_*.json")).read_text())["rows"]
    names = {r["config"] for r in rows}
    for op in ("quantize_activation", "rmsnorm_quantize", "silu_mul_quantize"):
        assert f"{op}, column programs" in names and f"{op}, row programs" in names
    assert any(r["M"] == 40 and r["config"].startswith("quantize_activation ") and " pf " in r["config"] for r in rows)
    assert not any(r["M"] == 3 and " pf " in r["config"] for r in rows)
    assert all(r["us"] > 0 for r in rows)

"""bench_quantize's table on CPU: the three quantizer ops run (reference path), bytes and rates are
filled in, and the JSON + markdown results are written (the GPU run times the Triton kernels)."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_quantize  # noqa: E402


def test_cpu_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))

    def wall_us(fn, use_graph=True):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6

    monkeypatch.setattr(bench_quantize, "DEVICE", "cpu")
    monkeypatch.setattr(bench_quantize, "bench_us", wall_us)
    monkeypatch.setattr(bench_quantize, "measured_copy_bytes_per_s", lambda: 1e12)
    monkeypatch.setattr(sys, "argv", ["bench_quantize", "--ms", "1,3", "--ks", "384"])
    bench_quantize.main()
    data = json.loads(next(tmp_path.glob("bench_quantize_*.json")).read_text())
    rows = data["rows"]
    assert {r["op"] for r in rows} == {"quantize_activation", "rmsnorm_quantize", "silu_mul_quantize"}
    assert len(rows) == 6 and all(r["us"] > 0 and r["GB/s"] >= 0 for r in rows)
    # bytes: 3 x 384 bf16 in, 128 packed + 128 outliers + 2 group scales + 1 outlier scale out
    assert bench_quantize.out_bytes(3, 384) == 3 * (128 + 128 + 8 + 4)
    assert data["meta"]["copy_bytes_per_s"] == 1e12

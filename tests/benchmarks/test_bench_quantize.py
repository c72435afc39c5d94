"""bench_quantize's table on CPU: the three quantizer ops (RMSNorm's with and without given statistics) run (reference path), bytes and rates are
filled in, and the JSON + markdown results are written (the GPU run times the Triton kernels)."""

from cpu_smoke import run_on_cpu  # also puts benchmarks/ on the path
import bench_quantize  # noqa: E402


def test_cpu_smoke(tmp_path, monkeypatch):
    data = run_on_cpu(bench_quantize, ["--ms", "1,3", "--ks", "384"], "bench_quantize", tmp_path, monkeypatch)
    rows = data["rows"]
    assert {r["op"] for r in rows} == {"quantize_activation", "rmsnorm_quantize", "rmsnorm_quantize (rstd given)",
                                       "silu_mul_quantize"}
    assert len(rows) == 8 and all(r["us"] > 0 and r["GB/s"] >= 0 for r in rows)
    # bytes: 3 x 384 bf16 in, 128 packed + 128 outliers + 2 group scales + 1 outlier scale out
    assert bench_quantize.out_bytes(3, 384) == 3 * (128 + 128 + 8 + 4)
    assert data["meta"]["copy_bytes_per_s"] == 1e12

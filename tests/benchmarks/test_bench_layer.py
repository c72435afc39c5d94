"""bench_layer's CPU smoke mode: one tiny decoder layer, the three variants compile, the pass
fuses what it promises (4 quantize launches: 2 RMSNorm-fused, 1 silu*up-fused, o_proj's plain
one), and the JSON + markdown results are written."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_layer  # noqa: E402


def test_cpu_tiny_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    saved = torch._inductor.config.post_grad_custom_post_pass
    try:
        rows = bench_layer.main(["--cpu", "--tiny", "--ms", "1"])
    finally:
        torch._inductor.config.post_grad_custom_post_pass = saved
    by = {r["variant"]: r for r in rows}
    assert set(by) == set(bench_layer.VARIANTS)
    assert by["atom+passes"]["quantize_launches"] == 4
    assert by["atom"]["quantize_launches"] == "inlined"
    # (CPU launch counts are not GPU ones: without the pass Inductor fuses the reference's aten
    # ops into a few C++ loops, while the fused ops are extern calls; only counted here)
    assert all(r["launches"] > 0 for r in rows)
    assert all(r["us_graph"] > 0 for r in rows)
    data = json.loads((tmp_path / "bench_layer_tiny_cpu.json").read_text())
    assert len(data["rows"]) == 3 and (tmp_path / "bench_layer_tiny_cpu.md").exists()


@pytest.mark.gpu
def test_gpu_decode_row(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    rows = bench_layer.main(["--shapes", "llama2-7b", "--ms", "1"])
    assert {r["variant"] for r in rows} == set(bench_layer.VARIANTS)

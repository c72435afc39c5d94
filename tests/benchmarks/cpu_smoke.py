"""Shared by the benchmarks' CPU smoke tests: the benchmarks folder on the path, and
``run_on_cpu``, which runs a benchmark's ``main`` on CPU (wall-clock timing, a fixed copy rate,
results in a temporary folder) and returns the JSON it wrote."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _wall_us(fn, use_graph=True):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def run_on_cpu(module, argv: list[str], stem: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("ATOM_AO_RESULTS", str(tmp_path))
    monkeypatch.setattr(module, "DEVICE", "cpu")
    monkeypatch.setattr(module, "bench_us", _wall_us)
    monkeypatch.setattr(module, "measured_copy_bytes_per_s", lambda: 1e12)
    monkeypatch.setattr(sys, "argv", [stem, *argv])
    module.main()
    return json.loads(next(tmp_path.glob(f"{stem}_*.json")).read_text())

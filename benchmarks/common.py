"""Shared pieces of the benchmarks: timing, GPU name, and writing a results table."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

# Ceilings measured on the H100 of this project (see the brief): used for roofline %
COPY_BYTES_PER_S = 3.0e12  # device-to-device copy, bytes read + written
PEAK_OPS = {"bf16": 725e12, "fp8": 1250e12, "int8": 1300e12}


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def gpu_state() -> dict | None:
    """The GPU's SM and memory clocks (MHz), temperature (C) and power (W) now, from nvidia-smi
    (None without it): read beside a timing, so two timings of one run can be told apart by
    the GPU's state."""
    import subprocess

    if not torch.cuda.is_available():
        return None
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw",
                               "--format=csv,noheader,nounits", f"--id={torch.cuda.current_device()}"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        sm, mem, temp, power = (float(v) for v in line.split(","))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return {"sm_mhz": sm, "mem_mhz": mem, "temp_c": temp, "power_w": power}


def gpu_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", gpu_name()).strip("-").lower()


def bench_us(fn, use_graph: bool = True) -> float:
    """Median microseconds of ``fn`` on the GPU; CUDA-graph replays remove launch gaps, as a
    serving engine's decode loop does, so small kernels are compared on GPU time."""
    import triton.testing

    fn()  # compile / autotune outside the timed region and the graph capture
    torch.cuda.synchronize()
    if use_graph:
        try:
            return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
        except Exception as e:  # some library paths cannot be captured: time them plainly
            print(f"  (no CUDA graph: {type(e).__name__}: {str(e)[:80]})")
    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def measured_copy_bytes_per_s(nbytes: int = 1 << 30) -> float:
    """This GPU's device-to-device copy bandwidth (bytes read + written per second), timed like
    everything else: the ceiling a memory-bound kernel is measured against on *this* GPU, where
    COPY_BYTES_PER_S is the H100 figure of the brief (the H200 of session 7 measured 2.77e12)."""
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    us = bench_us(lambda: y.copy_(x))
    return 2 * nbytes / (us * 1e-6)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def results_dir() -> Path:
    """benchmarks/results/, or $ATOM_AO_RESULTS (scripts/gpu_check.sh points it at the device's $OUT)."""
    out_dir = Path(os.environ.get("ATOM_AO_RESULTS", RESULTS))
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_results(name: str, rows: list[dict], columns: list[str], meta: dict) -> Path:
    """JSON + markdown under benchmarks/results/, named after the benchmark and the GPU."""
    out_dir = results_dir()
    stem = out_dir / f"{name}_{gpu_tag()}"
    meta = {"gpu": gpu_name(), "torch": torch.__version__, **meta}
    stem.with_name(stem.name + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    header = f"{name} on {meta['gpu']} (torch {meta['torch']})\n\n"
    stem.with_name(stem.name + ".md").write_text(header + markdown_table(rows, columns) + "\n")
    return stem


def set_module_flag(module: str, name: str, value: bool):
    """A boolean module-level switch (``--flag-ab``; also one whose default is ``"auto"``, as
    ``atom_ao.ops.pdl:ENABLED``), with a clear error for anything else."""
    import importlib

    mod = importlib.import_module(module)
    current = getattr(mod, name, None)
    if not (isinstance(current, bool) or current == "auto"):
        raise SystemExit(f"--flag-ab: {module}:{name} is not a boolean module flag")
    setattr(mod, name, value)


def kernel_us(fn, reps: int = 20) -> dict[str, float]:
    """GPU microseconds per call of ``fn`` by kernel name (a profiler trace of ``reps`` plain calls,
    after one untimed): where a case's time goes, beside its CUDA-graph timing."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return per_call_us(prof.key_averages(), reps)


def per_call_us(events, calls: int) -> dict[str, float]:
    """Profiler key averages -> {kernel name: device us per call}, largest first (events with no
    device time, the CPU-side ones, left out)."""
    out = {}
    for e in events:
        us = getattr(e, "device_time_total", None)
        us = e.cuda_time_total if us is None else us
        if us > 0:
            out[e.key] = out.get(e.key, 0.0) + us / calls
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def exposed_us(kernels, calls: int, idle_cap_us: float = 50.0) -> tuple[dict[str, float], float]:
    """Where a step's wall time goes on the GPU when kernels overlap (PDL): kernels as
    (name, start_us, end_us), a profiler's trace of ``calls`` steps. Walking them by start, each
    kernel is charged the time it moved the last end forward (end - max(start, the latest end
    before it)): a PDL kernel that launched early and waited is charged only what it added after
    its predecessor finished, so the charges plus the idle gaps sum to the span. Returns
    ({name: us a step, largest first}, idle us a step); gaps over ``idle_cap_us`` (the host between
    two replays) are left out of the idle time."""
    out, idle, last = {}, 0.0, None
    for name, start, end in sorted(kernels, key=lambda k: (k[1], k[2])):
        if last is None:
            charged = end - start
        else:
            gap = start - last
            if 0 < gap <= idle_cap_us:
                idle += gap
            charged = max(0.0, end - max(start, last))
        out[name] = out.get(name, 0.0) + charged / calls
        last = end if last is None else max(last, end)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])), idle / calls


def device_kernels(prof) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of each GPU kernel of a torch.profiler run."""
    out = []
    for e in prof.events():
        dev = str(getattr(e, "device_type", ""))
        if dev.endswith("CUDA") and getattr(e, "time_range", None) is not None:
            out.append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return out


def pin_autotuning(setattr_=setattr) -> list:
    """Same float sums on every build: each ``triton.autotune`` kernel of ``atom_ao.ops`` keeps
    only its first config, and Inductor's deterministic mode (where this torch has it) stops its
    reductions tuning RBLOCK / num_warps. Otherwise each build times its configs and may pick
    another tiling, whose sums round differently (two builds of one model then differ in the
    low bits without anything being wrong). ``setattr_``: e.g. pytest's ``monkeypatch.setattr``
    (undone after the test). Returns the pinned kernels' names."""
    import importlib
    import pkgutil

    import torch._inductor.config as inductor_config
    from triton.runtime.autotuner import Autotuner

    import atom_ao.ops

    if hasattr(inductor_config, "deterministic"):
        setattr_(inductor_config, "deterministic", True)
    pinned = []
    for info in pkgutil.iter_modules(atom_ao.ops.__path__):
        module = importlib.import_module(f"atom_ao.ops.{info.name}")
        for name, value in vars(module).items():
            tuners = value.values() if isinstance(value, dict) else [value]
            for i, tuner in enumerate(tuners):
                if isinstance(tuner, Autotuner) and len(tuner.configs) > 1:
                    setattr_(tuner, "configs", tuner.configs[:1])
                    pinned.append(f"{info.name}.{name}" + (f"[{i}]" if isinstance(value, dict) else ""))
    return pinned


class _AutotunePicks:
    """A logging filter keeping Inductor's "Benchmark all input configs for <kernel>" records and
    the per-config timings after them, for kernels whose name contains one of ``names``."""

    def __init__(self, names: tuple[str, ...]):
        self.names, self.keep = names, False

    def filter(self, record) -> bool:
        msg = record.getMessage()
        if msg.startswith("Benchmark all input configs for"):
            self.keep = any(n in msg for n in self.names)
        return self.keep


def log_autotune_picks(names: tuple[str, ...] = ("",)) -> None:
    """Print each compiled kernel's autotuning (every config's time, Inductor's debug log) for the
    kernels whose names contain one of ``names`` (default: all, Inductor's own too), so two builds'
    picks can be compared."""
    import logging
    import sys

    logger = logging.getLogger("torch._inductor.runtime.triton_heuristics")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  autotune: %(message)s"))
    handler.addFilter(_AutotunePicks(names))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def pdl_launch_report() -> dict[str, list[str]]:
    """How Inductor launches the live compiled kernels that take a ``PDL`` constexpr
    (``atom_ao.ops.pdl``): {kernel name: one word a launcher, after a note if its ``triton_meta``
    does not ask for the launch attribute}. A launcher: "static" (Inductor's static launcher, which
    sets no launch attributes), else "pdl" or "plain" by whether its binary was compiled with
    ``launch_pdl``, or "?" when the binary is not kept; then a compile result ("result:pdl",
    "result:plain", "result:?") the same way."""
    import gc
    import warnings

    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    except ImportError:
        return {}
    def compiled_with(binary) -> str:
        metadata = getattr(binary, "metadata", None)
        return "?" if metadata is None else "pdl" if getattr(metadata, "launch_pdl", False) else "plain"

    report = {}
    with warnings.catch_warnings():  # isinstance on some of gc's objects warns of deprecated names
        warnings.simplefilter("ignore")
        live = []
        for obj in gc.get_objects():
            try:
                if isinstance(obj, CachingAutotuner):
                    live.append(obj)
            except ReferenceError:  # a dead weak proxy
                continue
    for obj in live:
        meta = getattr(obj, "triton_meta", None) or {}
        traced = (meta.get("constants") or {}).get("PDL")
        if not meta.get("launch_pdl") and traced is None:
            continue
        kinds = [] if meta.get("launch_pdl") else [f"no launch_pdl (traced PDL={traced})"]
        kinds += ["static" if getattr(launcher, "_is_static", False) else compiled_with(getattr(launcher, "bin", None))
                  for launcher in getattr(obj, "launchers", [])]
        kinds += ["result:" + compiled_with(getattr(result, "kernel", None))
                  for result in getattr(obj, "compile_results", None) or []]
        name = (getattr(obj, "inductor_meta", None) or {}).get("kernel_name") or getattr(getattr(obj, "fn", None),
                                                                                          "__name__", "?")
        report.setdefault(f"{name}@{id(obj):x}", kinds)
    return report


def summarize_graph_dot(text: str) -> dict:
    """Counts from a CUDA graph's DOT dump (``CUDAGraph.debug_dump``, cudaGraphDebugDotPrint): nodes
    by the type their label starts with (KERNEL, MEMSET, MEMCPY, ...), edges, and the edges whose
    attributes mention a programmatic dependency (PDL) or a port."""
    kinds = ("KERNEL", "MEMSET", "MEMCPY", "HOST", "EMPTY", "EVENT_RECORD", "WAIT_EVENT", "EVENT_WAIT", "MEM_ALLOC",
             "MEM_FREE", "CHILD_GRAPH", "GRAPH", "CONDITIONAL", "BATCH_MEM_OP")
    nodes = {}
    for block in re.findall(r'^\s*"[^"]+"\s*\[(.*?)\];?\s*$', text, flags=re.M | re.S):
        block = block.replace("\\n", " ")  # DOT's escaped line breaks inside labels
        kind = next((k for k in re.findall(r"\b[A-Z][A-Z_]+\b", block) if k in kinds), "other")
        nodes[kind] = nodes.get(kind, 0) + 1
    edges = [line for line in text.splitlines() if "->" in line]
    return {"nodes": dict(sorted(nodes.items(), key=lambda kv: -kv[1])), "edges": len(edges),
            "programmatic_edges": sum("rogrammatic" in e for e in edges),
            "edges_with_ports": sum("port" in e.lower() for e in edges)}

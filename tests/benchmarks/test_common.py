"""benchmarks/common.py's helpers that need no GPU."""

from types import SimpleNamespace

import pytest

from cpu_smoke import run_on_cpu  # noqa: F401  (puts benchmarks/ on the path)
import common  # noqa: E402
from common import per_call_us  # noqa: E402


def test_per_call_us():
    # one kernel seen twice (two events of one name) adds up; host-only events (no device time)
    # are left out; largest first; older profilers name the field cuda_time_total
    events = [SimpleNamespace(key="reduce", device_time_total=10.0),
              SimpleNamespace(key="cudaLaunchKernel", device_time_total=0.0),
              SimpleNamespace(key="split", device_time_total=40.0),
              SimpleNamespace(key="reduce", device_time_total=6.0),
              SimpleNamespace(key="old", cuda_time_total=4.0)]
    assert per_call_us(events, 2) == {"split": 20.0, "reduce": 8.0, "old": 2.0}
    assert list(per_call_us(events, 2)) == ["split", "reduce", "old"]


def test_pin_autotuning_keeps_each_tuners_first_config(monkeypatch):
    # two builds then sum in the same order: every atom_ao autotuner (here one planted in an
    # atom_ao.ops module, and the dicts of them) down to its first config, undone by monkeypatch;
    # Inductor's reductions untuned
    import torch._inductor.config as inductor_config
    import triton

    from atom_ao.ops import pdl

    @triton.jit
    def probe(x):
        pass

    configs = [triton.Config({}, num_warps=w) for w in (1, 2, 4)]
    tuner = triton.autotune(configs=configs, key=[])(probe)
    by_regime = {"a": triton.autotune(configs=configs, key=[])(probe)}
    monkeypatch.setattr(pdl, "_probe_tuner", tuner, raising=False)
    monkeypatch.setattr(pdl, "_probe_tuners", by_regime, raising=False)
    with monkeypatch.context() as m:
        pinned = common.pin_autotuning(m.setattr)
        assert "pdl._probe_tuner" in pinned and "pdl._probe_tuners[0]" in pinned
        assert tuner.configs == configs[:1] and by_regime["a"].configs == configs[:1]
        if hasattr(inductor_config, "deterministic"):
            assert inductor_config.deterministic
    assert tuner.configs == configs and by_regime["a"].configs == configs


def test_autotune_picks_filter_keeps_named_kernels_blocks():
    # a header names the kernel; the config lines after it follow the header's verdict
    import logging

    f = common._AutotunePicks(("_w4a4",))

    def rec(msg, *args):
        return logging.LogRecord("x", logging.DEBUG, __file__, 1, msg, args, None)

    got = [f.filter(rec("Benchmark all input configs for %s, get:", "_w4a4_gemm_swap_kernel_jit")),
           f.filter(rec("%s: %f", "BLOCK_N: 64", 1.5)),
           f.filter(rec("Benchmark all input configs for %s, get:", "triton_red_fused_rms_norm_0")),
           f.filter(rec("%s: %f", "XBLOCK: 1", 2.0))]
    assert got == [True, True, False, False]


def test_set_module_flag_takes_boolean_and_auto_switches(monkeypatch):
    from common import set_module_flag

    from atom_ao.ops import pdl

    monkeypatch.setattr(pdl, "ENABLED", pdl.AUTO)  # the PDL switch's default
    set_module_flag("atom_ao.ops.pdl", "ENABLED", True)
    assert pdl.ENABLED is True
    with pytest.raises(SystemExit, match="not a boolean module flag"):
        set_module_flag("atom_ao.ops.pdl", "IN_PROCESS_NOT_THERE", True)


def test_exposed_us_charges_what_each_kernel_adds():
    from common import exposed_us

    kernels = [
        ("gemv", 0.0, 10.0),
        ("quant", 11.0, 13.0),  # 1 us idle before it
        ("gemv", 12.0, 20.0),  # launched early (PDL), waited: charged 13 -> 20 only
        ("tiny", 14.0, 15.0),  # wholly inside the one before: charged nothing
        ("quant", 120.0, 122.0),  # after a 100 us host gap (next replay): not idle
    ]
    charged, idle = exposed_us(kernels, calls=2)
    assert charged == {"gemv": (10.0 + 7.0) / 2, "quant": (2.0 + 2.0) / 2, "tiny": 0.0}
    assert idle == 0.5
    # one step: the charges and the idle time make up the span
    one = kernels[:4]
    charged, idle = exposed_us(one, calls=1)
    assert sum(charged.values()) + idle == 20.0


def test_device_kernels_keeps_gpu_events():
    from torch.autograd import DeviceType

    from common import device_kernels

    span = lambda a, b: SimpleNamespace(start=a, end=b)  # noqa: E731
    prof = SimpleNamespace(events=lambda: [
        SimpleNamespace(name="k", device_type=DeviceType.CUDA, time_range=span(1, 3)),
        SimpleNamespace(name="cudaGraphLaunch", device_type=DeviceType.CPU, time_range=span(0, 1))])
    assert device_kernels(prof) == [("k", 1.0, 3.0)]


def test_pdl_launch_report_reads_each_kernels_launchers():
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    def tuner(name, meta, launchers, results):
        t = object.__new__(CachingAutotuner)  # the fields the report reads, nothing compiled
        t.triton_meta, t.inductor_meta, t.launchers, t.compile_results = meta, {"kernel_name": name}, launchers, results
        return t

    def launcher(**attrs):
        f = lambda: None  # noqa: E731  (launchers are functions with attributes)
        f.__dict__.update(attrs)
        return f

    pdl_bin = SimpleNamespace(metadata=SimpleNamespace(launch_pdl=True))
    keep = [  # alive while the report walks the heap
        tuner("gemv_0", {"launch_pdl": True, "constants": {"PDL": True}}, [launcher(bin=pdl_bin)],
              [SimpleNamespace(kernel=pdl_bin)]),
        tuner("kv_write_3", {"constants": {"PDL": False}}, [launcher(_is_static=True)], []),
        tuner("inductor_poi_1", {"constants": {}}, [launcher()], []),
    ]
    report = {k.split("@")[0]: v for k, v in common.pdl_launch_report().items() if "@" in k}
    assert report["gemv_0"] == ["pdl", "result:pdl"]
    assert report["kv_write_3"] == ["no launch_pdl (traced PDL=False)", "static"]
    assert "inductor_poi_1" not in report  # takes no PDL constexpr
    del keep


def test_summarize_graph_dot_counts_nodes_and_programmatic_edges():
    dot = "\n".join([
        "digraph dot {",
        'subgraph cluster_1 {',
        '"graph_1_node_0"[',
        '\tstyle="solid" shape="record" label="{KERNEL\\n| {ID | 0 | _w4a4_gemv_kernel}',
        '}"];',
        '"graph_1_node_1"[style="solid" label="1\\nMEMSET\\n"];',
        '"graph_1_node_2"[style="solid" label="{KERNEL\\n| {ID | 2 | _decode_reduce_kernel}}"];',
        '"graph_1_node_0" -> "graph_1_node_1";',
        '"graph_1_node_1" -> "graph_1_node_2" [label="type: programmatic, from port: 1"];',
        "}", "}"])
    got = common.summarize_graph_dot(dot)
    assert got == {"nodes": {"KERNEL": 2, "MEMSET": 1}, "edges": 2, "programmatic_edges": 1, "edges_with_ports": 1}

"""bench_generate's profile sorts kernels into kinds; a copy back into a graph input is its own."""

import cpu_smoke  # noqa: F401  (puts benchmarks/ on the path)
import pytest
import json
import subprocess

from bench_generate import _form_tag, _kind, isolated_argv, parse_args, run_isolated, run_plan  # noqa: E402


def test_profile_kinds():
    assert _kind("triton_poi_fused_copy__4") == "Inductor copy_ into an input"
    # a fused cast is not a copy into an input
    assert _kind("triton_poi_fused__to_copy_add_select_1") == "fused elementwise (Inductor)"
    assert _kind("_w4a4_gemv_kernel") == "atom gemm"
    assert _kind("_quantize_activation_kernel") == "atom quantize"
    assert _kind("decode_gqa_kernel") == "attention"
    assert _kind("nvjet_sm90_tst_256x8_64x6_2x1_v_bz_TNT") == "cuBLAS / torchao gemm"


def test_projections_are_fused_by_default():
    args = parse_args([])
    assert args.compile_scope == "block" and parse_args(["--compile-scope", "step"]).compile_scope == "step"
    assert args.fused_qkv and args.fused_gate_up and _form_tag(args) == ""
    args = parse_args(["--no-fused-qkv", "--no-fused-gate-up"])
    assert not args.fused_qkv and not args.fused_gate_up
    assert _form_tag(args) == "_unfused_qkv_unfused_gate_up"


def test_run_plan_ab_forms_only_for_atom_paths():
    """--act-scales and --flag-ab repeat the atom paths only: bf16 keeps its plain label, the row
    every ratio is taken against."""
    plan = run_plan(parse_args(["--paths", "bf16,atom-kv4", "--act-scales", "group,row",
                                "--flag-ab", "atom_ao.ops.kv_decode_attention:MHA_PLANES"]))
    assert [label for *_, label in plan] == [
        "bf16", "atom-kv4/group-scales/MHA_PLANES=0", "atom-kv4/group-scales/MHA_PLANES=1",
        "atom-kv4/row-scales/MHA_PLANES=0", "atom-kv4/row-scales/MHA_PLANES=1"]
    assert plan[0][1:3] == ("group", None) and plan[2][1:3] == ("group", True)
    assert [label for *_, label in run_plan(parse_args(["--paths", "bf16,fp8,atom"]))] == ["bf16", "fp8", "atom"]
    both = run_plan(parse_args(["--paths", "atom-kv4", "--flag-ab", "m:A+B"]))  # flags flipped together
    assert [label for *_, label in both] == ["atom-kv4/A+B=0", "atom-kv4/A+B=1"]
    abba = run_plan(parse_args(["--paths", "atom-kv4", "--flag-ab", "m:A", "--ab-order", "0110"]))
    assert [(flag, label) for _, _, flag, label in abba] == [
        (False, "atom-kv4/A=0"), (True, "atom-kv4/A=1"), (True, "atom-kv4/A=1#2"), (False, "atom-kv4/A=0#2")]
    with pytest.raises(SystemExit, match="ab-order"):
        run_plan(parse_args(["--paths", "atom-kv4", "--flag-ab", "m:A", "--ab-order", "0x"]))


def test_isolate_is_the_default_and_a_child_runs_one_plan_entry():
    """Each build in its own process by default (a process's second Atom build times slower with
    PDL); the child's command line turns isolation off and names its entry and rows file."""
    assert parse_args([]).isolate and not parse_args(["--no-isolate"]).isolate
    argv = ["--paths", "bf16,atom-kv4", "--isolate"]
    child = parse_args(isolated_argv(argv, 1, "/tmp/r.json"))
    assert (child.isolate, child.plan_index, child.rows_json, child.paths) == (False, 1, "/tmp/r.json", "bf16,atom-kv4")
    assert run_plan(child)[child.plan_index][3] == "atom-kv4"


def test_run_isolated_collects_each_childs_rows_in_plan_order():
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        args = parse_args(cmd[2:])
        if args.plan_index == 1:  # a child that dies writes nothing: its rows are left out
            return subprocess.CompletedProcess(cmd, 1)
        with open(args.rows_json, "w") as f:
            json.dump([{"path": run_plan(args)[args.plan_index][3], "batch": 1}], f)
        return subprocess.CompletedProcess(cmd, 0)

    argv = ["--paths", "atom-kv4,bf16,fp8"]
    rows = run_isolated(argv, 3, run=fake_run)
    assert [r["path"] for r in rows] == ["atom-kv4", "fp8"]
    assert [parse_args(c[2:]).plan_index for c in calls] == [0, 1, 2]
    assert all(c[1].endswith("bench_generate.py") for c in calls)


def test_timed_positions_spread_over_the_generation():
    from bench_generate import timed_positions

    assert timed_positions(1024, 256, 32)[0] == 1024 and timed_positions(1024, 256, 32)[-1] == 1024 + 255
    assert len(set(timed_positions(1024, 256, 32))) == 32
    assert timed_positions(10, 4, 16) == [10, 11, 12, 13]  # fewer tokens than steps: each once
    assert timed_positions(10, 32, 1) == [10]


def test_decode_loop_feeds_each_argmax_back_at_consecutive_positions():
    import torch
    from bench_generate import decode_loop

    vocab = 11
    tok = torch.tensor([[3]])
    step_pos = torch.tensor([0])
    out = torch.zeros(1, vocab)  # the step returns the last position's logits
    seen = []

    def replay():  # a "model" whose next token is (token + position) % vocab
        seen.append((int(tok), int(step_pos)))
        out.zero_()
        out[0, (int(tok) + int(step_pos)) % vocab] = 1.0

    decode_loop(replay, out, tok, step_pos, [5, 6, 7])
    assert seen == [(3, 5), (8, 6), (3, 7)]
    assert int(tok) == 10


def test_run_batch_runs_without_grad():
    # run_batch needs a GPU; its no_grad wrapper is what keeps torch.compile from tracing a joint
    # (training) graph, which fails on the custom ops and keeps activations (session 29 lost it once)
    import bench_generate

    assert getattr(bench_generate.run_batch, "__wrapped__", None) is not None


def test_by_kind_groups_kernels_largest_first():
    from bench_generate import by_kind

    got = by_kind({"_w4a4_gemv_kernel": 10.04, "_quantize_activation_kernel": 3.0, "decode_gqa_kernel": 2.0,
                   "_kv_write_kernel": 1.5, "triton_poi_fused_add": 0.5, "mystery": 0.25})
    assert got == {"atom gemm": 10.0, "attention": 3.5, "atom quantize": 3.0,
                   "fused elementwise (Inductor)": 0.5, "other": 0.2}
    assert list(got) == ["atom gemm", "attention", "atom quantize", "fused elementwise (Inductor)", "other"]


def test_drop_caches_leaves_no_layer_alive():
    """A finished build must free all its weights (session 41: a loop variable kept the last layer)."""
    import gc
    import weakref
    from dataclasses import replace

    import torch
    from bench_generate import drop_caches
    from gpt import SHAPES, Llama

    s = replace(SHAPES["llama2-7b"], dim=64, n_layers=2, n_heads=2, n_kv_heads=2, intermediate=128, vocab=32)
    model = Llama(s)
    model.setup_caches(1, 8)
    last = weakref.ref(model.layers[-1].wo.weight)
    drop_caches(model)
    assert all(layer.cache is None for layer in model.layers)
    del model
    gc.collect()
    assert last() is None

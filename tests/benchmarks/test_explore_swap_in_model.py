"""explore_swap_in_model's knobs on CPU: the pinned config replaces every regime's autotuner with
that one config, bad specs stop with a message, and the wrapper hands the rest to bench_generate."""

import importlib

import pytest

from cpu_smoke import run_on_cpu  # noqa: F401  (puts benchmarks/ on the path)
import explore_swap_in_model  # noqa: E402


def test_pin_swap_config(monkeypatch):
    swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
    monkeypatch.setattr(swap, "SWAP_KERNELS", dict(swap.SWAP_KERNELS))
    assert explore_swap_in_model.pin_swap_config("64x32x3x4") == "64x32 st3 w4"
    for kernel in swap.SWAP_KERNELS.values():
        (config,) = kernel.configs
        assert config.kwargs == {"BLOCK_N": 64, "BLOCK_M": 32} and config.num_warps == 4 and config.num_stages == 3


@pytest.mark.parametrize("spec", ["64x64x3", "64x128x3x4", "64xAx3x4", "0x64x3x4"])
def test_pin_swap_config_bad(spec):
    with pytest.raises(SystemExit, match="--swap-config"):
        explore_swap_in_model.pin_swap_config(spec)


def test_forwards_to_bench_generate(monkeypatch):
    import torch._inductor.config as inductor_config

    swap = importlib.import_module("atom_ao.ops.w4a4_gemm_swap")
    monkeypatch.setattr(swap, "OUT_SHARE", swap.OUT_SHARE)
    # main turns Inductor's caches off for its own process: not for the rest of this one
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
    monkeypatch.setattr(inductor_config, "force_disable_caches", inductor_config.force_disable_caches)
    seen = {}
    monkeypatch.setattr(explore_swap_in_model.runpy, "run_path",
                        lambda path, run_name: seen.update(path=path, argv=list(explore_swap_in_model.sys.argv),
                                                           share=swap.OUT_SHARE))
    monkeypatch.setattr(explore_swap_in_model.sys, "argv",
                        ["explore_swap_in_model.py", "--out-share", "5", "--", "--batches", "64"])
    explore_swap_in_model.main()
    assert seen["path"].endswith("bench_generate.py") and seen["argv"][1:] == ["--batches", "64"]
    assert seen["share"] == 5 and inductor_config.force_disable_caches

"""atom_ao.inductor.ttir_cache: the memoized Triton mutation analysis returns what the analysis
returns, once per distinct (kernel, argument dtypes / values), and leaves other kernels alone.
(The analysis itself needs a GPU target; here it is a recording stand-in.)"""

import pytest
import torch
from torch._higher_order_ops import triton_kernel_wrap as tkw
from torch._subclasses.fake_tensor import FakeTensorMode

from atom_ao.inductor import ttir_cache
from atom_ao.ops.quantize_activation import _tuned_small as _quantize_kernel  # an Autotuner over a JITFunction

NAME = next(n for n in ttir_cache._NAMES if hasattr(tkw, n))  # this torch's analysis function


@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def analysis(kernel, kwargs, tma_descriptor_metadata):
        calls.append(dict(kwargs))
        return ["out_ptr"] if kwargs.get("BLOCK", 0) != 7 else []

    was_installed = ttir_cache.is_installed()  # on by default: atom_ao's pass installs it
    ttir_cache.uninstall()
    monkeypatch.setattr(tkw, NAME, analysis)
    ttir_cache.install()
    ttir_cache.STATS.update(hits=0, misses=0, passed=0)
    yield calls
    ttir_cache.uninstall()
    assert getattr(tkw, NAME) is analysis
    monkeypatch.undo()
    if was_installed:
        ttir_cache.install()


def test_same_arguments_are_analysed_once(recorded):
    with FakeTensorMode():
        x, y = torch.empty(4, 256, dtype=torch.bfloat16), torch.empty(8, 256, dtype=torch.bfloat16)
    first = getattr(tkw, NAME)(_quantize_kernel, {"x_ptr": x, "out_ptr": x, "BLOCK": 128}, {})
    again = getattr(tkw, NAME)(_quantize_kernel, {"x_ptr": y, "out_ptr": y, "BLOCK": 128}, {})  # other shape
    assert first == again == ["out_ptr"] and first is not again  # each caller gets its own list
    assert len(recorded) == 1 and ttir_cache.STATS["hits"] == 1, (ttir_cache.STATS, ttir_cache._ORIGINAL)
    # another dtype or another scalar value is another IR: analysed again
    with FakeTensorMode():
        h = torch.empty(4, 256, dtype=torch.float16)
    getattr(tkw, NAME)(_quantize_kernel, {"x_ptr": h, "out_ptr": h, "BLOCK": 128}, {})
    assert getattr(tkw, NAME)(_quantize_kernel, {"x_ptr": x, "out_ptr": x, "BLOCK": 7}, {}) == []
    assert len(recorded) == 3


def test_other_kernels_and_real_tensors_pass_through(recorded):
    class Foreign:  # a kernel from outside atom_ao
        arg_names = ["x_ptr"]

        def fn(self):
            pass

    real = torch.empty(4, dtype=torch.float32)
    for _ in range(2):
        getattr(tkw, NAME)(Foreign(), {"x_ptr": 1}, {})
        getattr(tkw, NAME)(_quantize_kernel, {"x_ptr": real, "out_ptr": real, "BLOCK": 128}, {})
    assert len(recorded) == 4 and ttir_cache.STATS["passed"] == 4 and not ttir_cache.CACHE


def test_on_by_default_and_off_through_the_environment(monkeypatch, recorded):
    ttir_cache.uninstall()
    monkeypatch.setenv(ttir_cache.ENV_VAR, "0")
    ttir_cache.install_if_requested()
    assert not ttir_cache.is_installed()
    monkeypatch.delenv(ttir_cache.ENV_VAR)
    ttir_cache.install_if_requested()
    assert getattr(tkw, NAME).__wrapped__ is not None

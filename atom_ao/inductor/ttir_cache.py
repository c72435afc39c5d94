"""Memoize torch's Triton-kernel mutation analysis for atom_ao's kernels (on by default).

Every call of a ``wrap_triton`` kernel inside a compiled graph is analysed for the tensors it
writes: torch lowers the kernel to Triton IR and walks it (``identify_mutated_tensors`` on torch
2.11, ``identify_accessed_tensors`` on 2.13), during functionalization and again when Inductor
lowers the call. A Llama decode step has ~10 atom_ao kernel calls a layer, all of a handful of
kernels with the same arguments layer after layer, so that work repeats hundreds of times; it is
the suspect for the Atom step's compile time (session 20, H200: Llama-2-7B's Atom + INT4 KV
decode step took 233 s to compile, bf16 ~25 s).

The analysis reads only what ``generate_ttir`` builds the IR from: the kernel, each tensor
argument's dtype (fake tensors and Inductor buffers become ``torch.empty(2, dtype)``), 2 for
every symbolic size, every other argument's value, and the TMA metadata. The key here is exactly
that, so a hit returns what the analysis would have returned. Real tensors (their data pointers'
alignment specializes the IR) and anything else the key does not know are passed through.

On by default (installed with atom_ao's Inductor pass, ``atom_ao.inductor.install``);
``ATOM_AO_TTIR_CACHE=0`` turns it off, ``uninstall()`` removes it. Session 21 (H200, torch 2.11,
``bash scripts/gpu_check.sh compile-profile-s21``: ``scripts/compile_profile.py --layers 4 --kv4``
without and then with it, Inductor's caches off): the first compiled generate of a 4-layer
SmolLM2-shaped Atom + INT4 KV model took 101.4 s without and 61.1 s with it (59 hits, 69
misses); Triton's front end in the main process went from 3200 kernel lowerings to 1279 (its
code generator's own time under cProfile 11.3 -> 5.0 s). Part of the 40 s is Triton's disk cache,
which the first run filled for the second (process waits 8.4 -> 1.1 s), so the cache's own share
is less than that. Perplexities and tokens were unchanged with it on (the main job on the GPU).
"""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any

import torch

ENV_VAR = "ATOM_AO_TTIR_CACHE"
_NAMES = ("identify_mutated_tensors", "identify_accessed_tensors")  # torch 2.11 / 2.13
_ORIGINAL: dict[str, Any] = {}
CACHE: dict[tuple, Any] = {}
STATS = {"hits": 0, "misses": 0, "passed": 0}


def _is_atom_kernel(kernel) -> bool:
    """Defined in atom_ao: follow .fn (Autotuner / Heuristics -> JITFunction, or the
    interpreter's wrapper) down to the Python function."""
    for _ in range(8):
        if inspect.isfunction(kernel):
            return kernel.__module__.startswith("atom_ao.")
        kernel = getattr(kernel, "fn", None)
    return False


def _arg_key(a):
    import sympy

    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool, sympy.Expr)):
        return ("sym",)
    from torch._inductor.ir import TensorBox

    if isinstance(a, (FakeTensor, TensorBox)):  # what generate_ttir turns into torch.empty(2, dtype)
        return ("tensor", a.dtype)
    if isinstance(a, torch.Tensor):
        raise KeyError  # a real tensor: its pointer's alignment specializes the IR
    if a is None or isinstance(a, (bool, int, float, str, torch.dtype)):
        return ("value", type(a), a)
    raise KeyError


def key(kernel, kwargs: dict, tma_descriptor_metadata) -> tuple | None:
    """The cache key of one analysis, or None when it must not be cached."""
    if not _is_atom_kernel(kernel):
        return None
    try:
        args = tuple(sorted((name, _arg_key(a)) for name, a in kwargs.items()))
        tma = repr(sorted(tma_descriptor_metadata.items())) if tma_descriptor_metadata else ""
    except KeyError:
        return None
    return (id(kernel), args, tma)


def _memoized(original):
    def analysis(kernel, kwargs, tma_descriptor_metadata, *rest, **kw):
        k = key(kernel, kwargs, tma_descriptor_metadata) if not rest and not kw else None
        if k is None:
            STATS["passed"] += 1
            return original(kernel, kwargs, tma_descriptor_metadata, *rest, **kw)
        if k in CACHE:
            STATS["hits"] += 1
        else:
            STATS["misses"] += 1
            CACHE[k] = original(kernel, kwargs, tma_descriptor_metadata)
        return copy.deepcopy(CACHE[k])  # each caller its own (a list of names, or torch 2.13's TensorAccesses)

    analysis.__wrapped__ = original
    return analysis


def install() -> None:
    """Wrap torch's analysis function (whichever of the two names this torch has); idempotent."""
    from torch._higher_order_ops import triton_kernel_wrap as tkw

    for name in _NAMES:
        fn = getattr(tkw, name, None)
        if fn is not None and name not in _ORIGINAL:
            _ORIGINAL[name] = fn
            setattr(tkw, name, _memoized(fn))


def uninstall() -> None:
    from torch._higher_order_ops import triton_kernel_wrap as tkw

    for name, fn in _ORIGINAL.items():
        setattr(tkw, name, fn)
    _ORIGINAL.clear()
    CACHE.clear()


def is_installed() -> bool:
    return bool(_ORIGINAL)


def install_if_requested() -> None:
    """Install unless ``ATOM_AO_TTIR_CACHE`` is 0 / false / no / off."""
    if os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off"):
        install()

"""Programmatic dependent launch (PDL, sm90+) for the batch-1 decode chain: on by default there.

A kernel launched with PDL may start while the kernel before it in the stream still runs. The
atom_ao kernels of a batch-1 decode step take a ``PDL`` constexpr (the activation quantizer,
the one-token gemv, the KV write, the decode attention's split kernels, planes and 4-warp, and
their reduce): they wait (``griddepcontrol.wait``, ``wait_then_release``) before they touch anything an earlier
kernel wrote, and only then let the next kernel launch, so each one's completion still implies
its predecessor's; the gemv issues its first weight loads (which no kernel writes) before its
wait, and lets the next kernel launch only after its K loop (``wait_for_prior`` /
``release_next``). ``benchmarks/explore_pdl.py`` times the quantizer -> gemv chain alone (H200,
session 33: 2016 -> 1841 us for 128 linears).

``ENABLED`` says which launches take it: ``AUTO`` (the default) the one-token launches of a
batch-1 decode step, the configuration timed and checked for the same bits on the H200 (session
35: Llama-2-7B 2.77 -> 2.31 ms a token, Llama-3-8B 3.30 -> 2.81); ``True`` (``enable()``,
``ATOM_AO_PDL=1``) every launch of these kernels; ``False`` (``enable(False)``, ``ATOM_AO_PDL=0``)
none. AMD GPUs and NVIDIA before sm90 never take it. When a launch takes it:

* eager launches pass ``launch_pdl=True`` to Triton themselves;
* in compiled graphs Inductor launches the kernels, and its launcher of user Triton kernels sets
  launch attributes only from the kernel's ``triton_meta``: ``install_inductor_hook`` (run by
  ``enable()`` or by the first launch that takes PDL) wraps Inductor's ``user_autotune`` so that
  a kernel traced with ``PDL=True`` gets ``launch_pdl`` there, and the wrapper codegen's
  ``define_kernel`` so that the generated source asks for it too (the form compile workers build
  from). (Set ``torch._inductor.config.triton.enable_pdl`` too for
  Inductor's own kernels.)

A kernel traced with ``PDL=True`` but launched without the attribute only runs its waits, which
are then no-ops.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import torch
import triton
import triton.language as tl

AUTO = "auto"  # the one-token launches only
ENABLED: bool | str = {"1": True, "0": False}.get(os.environ.get("ATOM_AO_PDL", ""), AUTO)
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def enable(on: bool | str = True) -> None:
    """Launch the PDL-aware kernels with programmatic dependent launch from now on: every launch
    (True), none (False) or the one-token launches (``AUTO``, the default); sm90+ only."""
    global ENABLED
    if on not in (True, False, AUTO):
        raise ValueError(f"atom_ao.ops.pdl.enable: expected True, False or {AUTO!r}, got {on!r}")
    ENABLED = on
    if ENABLED:
        install_inductor_hook()


def wanted(t: torch.Tensor, pdl: bool | None, one_token: bool = False) -> bool:
    """Whether a launch on ``t``'s device takes PDL: ``pdl``, or the module switch when None
    (``AUTO``: when the launch is one token's, ``one_token``); never under the interpreter, on
    AMD GPUs or below sm90 (the kernels' waits need Hopper)."""
    on = ENABLED if pdl is None else pdl
    asked = bool(on) and on != AUTO  # asked for explicitly: say so when it cannot be had
    if on == AUTO:
        on = one_token
    if not on or _INTERPRET or t.device.type != "cuda" or torch.version.hip is not None \
            or torch.cuda.get_device_capability(t.device)[0] < 9:
        return False
    install_inductor_hook()  # a compiled graph tracing this launch needs it (the switch may be set directly)
    if torch.compiler.is_compiling() and not _analysis_reads_waits:
        # Inductor would count every argument written and copy weights around the kernel, and the
        # gemv's early weight loads would race those copies: a wrong answer, so no PDL here
        if asked:
            warnings.warn("atom_ao.ops.pdl: this torch's Inductor mutation analysis cannot be taught to read "
                          "the PDL waits; compiled graphs launch without PDL", stacklevel=2)
        return False
    return True


def launch_kwargs(pdl: bool, t: torch.Tensor) -> dict:
    """Triton launch options for a PDL launch: ``launch_pdl`` when the launch runs now (eager);
    nothing while torch.compile traces it (Inductor's launcher takes it from ``triton_meta``,
    see ``install_inductor_hook``)."""
    # a traced launch sees fake / functional tensor subclasses, an eager one plain tensors
    if not pdl or torch.compiler.is_compiling() or type(t) is not torch.Tensor:
        return {}
    return {"launch_pdl": True}


def launch_options(t: torch.Tensor, pdl: bool | None = None, one_token: bool = False) -> dict:
    """The ``PDL`` constexpr and launch options of a kernel launch on ``t``'s device;
    ``one_token``: the launch works on one token (a batch-1 decode step's)."""
    on = wanted(t, pdl, one_token)
    return {"PDL": on, **launch_kwargs(on, t)}


@triton.jit
def wait_for_prior(PDL: tl.constexpr):
    """In a kernel launched with PDL: wait until the kernel before it has finished (its writes
    visible). Call it before the first load of anything an earlier kernel wrote, and before any
    store."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release_next(PDL: tl.constexpr):
    """Let the next kernel launch (after ``wait_for_prior``). Late in a kernel with many programs:
    early-launched programs of the next kernel take SM slots while they wait."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wait_then_release(PDL: tl.constexpr):
    """``wait_for_prior``, then ``release_next`` at once (the small kernels)."""
    wait_for_prior(PDL)
    release_next(PDL)


def pdl_meta(triton_meta: dict) -> dict:
    """``triton_meta`` with ``launch_pdl`` set if the kernel was traced with ``PDL=True``."""
    if triton_meta and (triton_meta.get("constants") or {}).get("PDL") is True:
        return {**triton_meta, "launch_pdl": True}
    return triton_meta


def with_launch_pdl(kernel_body: str) -> str:
    """Inductor's generated source of one user Triton kernel, with ``'launch_pdl': True`` added to
    the ``triton_meta`` of its ``user_autotune`` decorator when the kernel was traced with
    ``PDL=True`` (its constants say ``'PDL': True``); any other source unchanged. Compile workers
    build the kernel from this text, so they launch it with PDL too."""
    head, jit, rest = kernel_body.partition("@triton.jit")
    if not jit or "user_autotune(" not in head or "triton_meta={" not in head or "'PDL': True" not in head \
            or "'launch_pdl'" in head:
        return kernel_body
    return head.replace("triton_meta={", "triton_meta={'launch_pdl': True, ", 1) + jit + rest


_hooked = False
_analysis_reads_waits = False  # Inductor's mutation analysis sees the waits as writing nothing
MARKED: list[str] = []  # the compiled kernels the hook gave launch_pdl (their Inductor names)
# Compile the graph's kernels in this process while PDL is in use (compile_threads = 1), where the
# user_autotune wrapper sees them: off unless ATOM_AO_PDL_IN_PROCESS=1. The generated sources
# carry launch_pdl themselves (with_launch_pdl), and compile workers honour it (H200, session 35:
# the same-bits GPU tests pass and the batch-1 model keeps its PDL speed with the workers on).
IN_PROCESS = os.environ.get("ATOM_AO_PDL_IN_PROCESS", "0") == "1"


def _mark(name: str) -> None:
    if name not in MARKED:
        MARKED.append(name)


def install_inductor_hook() -> None:
    """Wrap ``torch._inductor.runtime.triton_heuristics.user_autotune`` (the decorator Inductor's
    generated code puts on every user Triton kernel) with ``pdl_meta``. Compiled modules look it
    up when they load, so this must run before the model is compiled. Inductor's compile workers
    build the kernels without that wrapper, so it also wraps the wrapper codegen's
    ``define_kernel`` with ``with_launch_pdl`` (the generated source then asks for the launch
    attribute itself; ``IN_PROCESS`` compiles in this process instead), and lets Inductor's
    mutation analysis read the waits (``operandless_asm_is_pure``)."""
    global _hooked
    if _hooked:
        return
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime import triton_heuristics

    if IN_PROCESS:
        inductor_config.compile_threads = 1
    _patch_define_kernel()

    original = triton_heuristics.user_autotune

    @functools.wraps(original)
    def user_autotune(*args, **kwargs):
        if "triton_meta" in kwargs:
            kwargs["triton_meta"] = meta = pdl_meta(kwargs["triton_meta"])
        elif len(args) > 1:
            args = (args[0], meta := pdl_meta(args[1]), *args[2:])
        else:
            meta = None
        if meta and meta.get("launch_pdl"):
            _mark((kwargs.get("inductor_meta") or {}).get("kernel_name", "?"))
        return original(*args, **kwargs)

    triton_heuristics.user_autotune = user_autotune
    _let_inductor_read_waits()
    _hooked = True


def _patch_define_kernel() -> None:
    """Wrap ``PythonWrapperCodegen.define_kernel`` (where this torch has it) so every kernel
    source it is given passes through ``with_launch_pdl``."""
    try:
        from torch._inductor.codegen.wrapper import PythonWrapperCodegen
    except ImportError:
        return
    original = getattr(PythonWrapperCodegen, "define_kernel", None)
    if original is None or getattr(original, "_atom_ao_pdl", False):
        return

    @functools.wraps(original)
    def define_kernel(self, kernel_name, kernel_body, *args, **kwargs):
        if isinstance(kernel_body, str):
            patched = with_launch_pdl(kernel_body)
            if patched is not kernel_body:
                _mark(kernel_name)
            kernel_body = patched
        return original(self, kernel_name, kernel_body, *args, **kwargs)

    define_kernel._atom_ao_pdl = True
    PythonWrapperCodegen.define_kernel = define_kernel


def operandless_asm_is_pure(functions: dict) -> dict:
    """Mark every inline-asm op without operands pure in ``ttir_to_functions``' answer.

    Triton 3.6 lowers ``gdc_wait`` / ``gdc_launch_dependents`` to side-effecting inline asm
    (later Triton to their own ops). Inductor's mutation analysis of a user kernel gives up on
    such asm and then treats every argument as written: the compiled graph cloned the weights
    before each gemv and copied them back after (H200, session 33: 5.7 ms of copies a Llama-2-7B
    token, and the gemv's early weight loads raced those copies). An asm op with no operands
    cannot address any argument, so it writes none of them."""
    for ops in functions.values():
        for op_list in ops.values():
            for i, op in enumerate(op_list):
                if op.name == "tt.elementwise_inline_asm" and not op.args and not getattr(op, "is_pure", True):
                    op_list[i] = dataclasses.replace(op, is_pure=True)  # (a frozen dataclass)
    return functions


def _let_inductor_read_waits() -> None:
    """Wrap ``triton_kernel_wrap.ttir_to_functions`` with ``operandless_asm_is_pure`` (where this
    torch has both; ``_analysis_reads_waits`` says whether it worked)."""
    global _analysis_reads_waits
    from torch._higher_order_ops import triton_kernel_wrap as tkw

    original = getattr(tkw, "ttir_to_functions", None)
    op_fields = getattr(getattr(tkw, "Op", None), "__dataclass_fields__", {})
    if original is None or "is_pure" not in op_fields:
        return
    _analysis_reads_waits = True
    if getattr(original, "_atom_ao_pdl", False):
        return

    @functools.wraps(original)
    def ttir_to_functions(*args, **kwargs):
        return operandless_asm_is_pure(original(*args, **kwargs))

    ttir_to_functions._atom_ao_pdl = True
    tkw.ttir_to_functions = ttir_to_functions

"""Launch contracts of the Triton kernels that torch.compile sees through ``wrap_triton``.

Inductor's user-defined-kernel path binds exactly the arguments a launch passes: a kernel
parameter with a default value that the launcher leaves out fails at compile time ("Incorrect
number of arguments passed to kernel"), on the GPU only. Checked here for every kernel of the
package's op modules (their helper functions may keep defaults: Inductor never binds those).
"""

import importlib
import inspect
import pkgutil

import atom_ao.ops


def _launched_kernels():
    for info in pkgutil.iter_modules(atom_ao.ops.__path__):
        mod = importlib.import_module(f"atom_ao.ops.{info.name}")
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            # @triton.jit kernels (JITFunction, or the interpreter's wrapper under TRITON_INTERPRET),
            # not helpers: launched with a grid, so named *_kernel*
            if type(obj).__module__.startswith("triton") and inspect.isfunction(fn) and "kernel" in name:
                yield f"{info.name}.{name}", fn


def test_no_kernel_parameter_has_a_default():
    kernels = dict(_launched_kernels())
    assert "kv_decode_mha.decode_mha_kernel" in kernels and len(kernels) > 10
    bad = {k: [p.name for p in inspect.signature(fn).parameters.values() if p.default is not inspect.Parameter.empty]
           for k, fn in kernels.items()}
    assert not {k: v for k, v in bad.items() if v}, bad

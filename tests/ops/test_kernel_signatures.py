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


_INDUCTOR_SOURCE_CHECK = r"""
import ast, builtins, dis, importlib.util, os, pkgutil, tempfile
from triton.runtime.jit import JITFunction
from torch._inductor.codegen.triton import TritonKernel
from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
import atom_ao.ops
bad, n = {}, 0
tmp = tempfile.mkdtemp()
for info in pkgutil.iter_modules(atom_ao.ops.__path__):
    mod = importlib.import_module(f"atom_ao.ops.{info.name}")
    for name, obj in vars(mod).items():
        if isinstance(obj, JITFunction) and "kernel" in name:
            n += 1
            src = user_defined_triton_kernel_transitive_closure_source_code(obj)
            # the way Inductor's wrapper embeds it: async_compile.triton(name, '''<source>''')
            wrapper = f"k = async_compile.triton({name!r}, '''\n{src}\n''')\n"
            try:
                code_src = ast.parse(wrapper).body[0].value.args[1].value
                compile(code_src, name, "exec")
            except SyntaxError as e:
                bad[f"{info.name}.{name}"] = str(e)
                continue
            # run it under the imports Inductor puts above it; then every global name a jit function
            # there reads must resolve (a helper called as module.helper is not copied: NameError)
            # (from a file, as Inductor loads it: triton.jit reads a function's source back)
            path = os.path.join(tmp, f"{info.name}_{name}.py")
            with open(path, "w") as f:
                # the kernel's own source comes without its decorator, which Inductor writes above it
                f.write(TritonKernel.gen_common_triton_imports() + "\n@triton.jit\n" + code_src.lstrip())
            spec = importlib.util.spec_from_file_location(f"inductor_copy_{info.name}_{name}", path)
            copy = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(copy)
            ns = vars(copy)
            for fname, fn in list(ns.items()):
                if isinstance(fn, JITFunction) and fn.fn.__globals__ is ns:
                    missing = {i.argval for i in dis.get_instructions(fn.fn) if i.opname == "LOAD_GLOBAL"}
                    missing = {g for g in missing if g not in ns and not hasattr(builtins, g)}
                    if missing:
                        bad[f"{info.name}.{name} -> {fname}"] = f"undefined in Inductor's copy: {sorted(missing)}"
assert n > 10, n
assert not bad, bad
print("ok", n)
"""


def test_inductor_can_embed_every_kernel_source():
    # Inductor copies a wrap_triton kernel, its helpers and the module constants they read into a
    # triple-quoted string of its generated wrapper; a constant string holding a line break came
    # back as a broken literal ("unterminated string literal", on the GPU only); a jit helper called
    # through its module (pdl.wait_then_release) was not copied (NameError, on the GPU only). Real
    # JITFunctions are needed, so this runs without the interpreter.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _INDUCTOR_SOURCE_CHECK], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]

"""Keep ``atom_ao::quantize_activation`` whole until the post-grad pass sees it.

``torch.library.triton_op`` decomposes an op into its implementation while AOTAutograd traces
(so Inductor can inline the Triton launch); on CPU that is the reference's aten ops, on CUDA a
Triton kernel call, and in neither case is the op left for a pattern to find. While the atom_ao
pass is installed, the op is traced as itself instead: it reaches the pass, and Inductor calls
it (or the fused op replacing it) as an extern kernel.
"""

from __future__ import annotations

from torch._subclasses.functional_tensor import FunctionalTensorMode

from atom_ao.ops.quantize_activation import quantize_activation

_done = False


def keep_quantize_whole(active) -> None:
    """Wrap the op's FunctionalTensorMode rule: whole while ``active()``, decomposed otherwise."""
    global _done
    if _done:
        return
    decompose = quantize_activation._torch_dispatch_fns.get(FunctionalTensorMode)

    def rule(mode, op, types, args, kwargs):
        if active() or decompose is None:
            return mode.__torch_dispatch__(op, types, args, kwargs)
        return decompose(mode, op, types, args, kwargs)

    quantize_activation.register_torch_dispatch(FunctionalTensorMode, rule)
    _done = True

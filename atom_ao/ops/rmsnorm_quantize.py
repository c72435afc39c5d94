"""``atom_ao::rmsnorm_quantize``: RMSNorm fused with the Atom activation quantizer.

Same outputs as ``quantize_activation(rms_norm(x) * weight, perm, ...)`` (the paper's first
fused kernel: normalise, permute and quantize in one pass). The normalised tensor itself is not
returned: in a pre-norm decoder layer the residual is the norm's *input*, and the norm's output
only feeds the linears that follow (q/k/v, or gate/up), which take the quantized form.

``cast_before_weight`` picks the rounding order of the two ways models write RMSNorm:
transformers' Llama/Qwen/Mistral ``weight * h.to(x.dtype)`` (True) and ``F.rms_norm``
(``(h * weight).to(dtype)``, False); the fused kernel rounds exactly where each does.

``rstd`` (optional): the per-row statistic ``1 / sqrt(mean(x^2) + eps)`` (M floats), when the
caller has it already. The Inductor pass passes the one the model's graph computes: Inductor then
fuses that reduction into the kernel that produced x (the residual add), and the quantizer reads
x once instead of twice (``eps`` is then unused).
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from atom_ao.format import quantize_activation_ref
from atom_ao.ops.fused_quantize import RMSNORM, check_args, fused_quantize_triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, cast_before_weight: bool,
                 rstd: torch.Tensor | None = None) -> torch.Tensor:
    """The RMSNorm the fused op replaces, in plain PyTorch (float32 statistics, or ``rstd``)."""
    xf = x.float()
    if rstd is None:
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        rstd = rstd.float().reshape(-1, 1)
    h = xf * rstd
    if cast_before_weight:
        return weight * h.to(x.dtype)
    return (h * weight).to(torch.promote_types(x.dtype, weight.dtype))


def rmsnorm_quantize_ref(x, weight, eps, perm, n_outliers, group_size, clip_ratio, cast_before_weight=False,
                         asymmetric=False, rstd=None):
    return quantize_activation_ref(rms_norm_ref(x, weight, eps, cast_before_weight, rstd), perm, n_outliers,
                                   group_size, clip_ratio, asymmetric)


def _check(x: torch.Tensor, weight: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int,
           rstd: torch.Tensor | None = None) -> None:
    check_args("rmsnorm_quantize", x, perm, n_outliers, group_size)
    if rstd is not None and (rstd.numel() != x.shape[0] or rstd.dtype != torch.float32 or rstd.device != x.device):
        raise ValueError(f"rmsnorm_quantize: rstd must hold {x.shape[0]} float32 values on {x.device} (one per row), "
                         f"got {tuple(rstd.shape)} {rstd.dtype} on {rstd.device}")
    if weight.shape != (x.shape[1],):
        raise ValueError(f"rmsnorm_quantize: weight has shape {tuple(weight.shape)}, expected ({x.shape[1]},)")
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"rmsnorm_quantize: weight must be fp16/bf16/fp32, got {weight.dtype}")


def rmsnorm_quantize_triton(x, weight, eps, perm, n_outliers, group_size, clip_ratio, cast_before_weight=False,
                            kernel=None, asymmetric=False, rstd=None):
    """Launch the fused Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1);
    ``kernel`` "stream" / "tile" overrides the default choice (``atom_ao.ops.fused_quantize``)."""
    _check(x, weight, perm, n_outliers, group_size, rstd)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    return fused_quantize_triton(RMSNORM, x, None, weight, perm, eps, n_outliers, group_size, clip_ratio,
                                 cast_before_weight, out_dtype, kernel, asymmetric, rstd)


@triton_op("atom_ao::rmsnorm_quantize", mutates_args=())
def rmsnorm_quantize(
    x: torch.Tensor, weight: torch.Tensor, eps: float, perm: torch.Tensor, n_outliers: int, group_size: int,
    clip_ratio: float, cast_before_weight: bool = False, asymmetric: bool = False, rstd: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, K) -> the four outputs of ``quantize_activation`` of ``rms_norm(x) * weight``.

    CUDA runs the fused Triton kernel; other devices run the reference.
    """
    if x.is_cuda:
        return rmsnorm_quantize_triton(x, weight, eps, perm, n_outliers, group_size, clip_ratio, cast_before_weight,
                                       asymmetric=asymmetric, rstd=rstd)
    _check(x, weight, perm, n_outliers, group_size, rstd)
    return rmsnorm_quantize_ref(x, weight, eps, perm, n_outliers, group_size, clip_ratio, cast_before_weight,
                                asymmetric, rstd)

"""``AtomQuantTensor``: a linear weight in the Atom W4A4 format (see ``atom_ao.format``)."""

from __future__ import annotations

import hashlib

import torch
from torch.utils._python_dispatch import return_and_correct_aliasing
from torchao.utils import TorchAOBaseTensor, fill_defaults

import atom_ao.ops  # noqa: F401  (registers torch.ops.atom_ao.*)
from atom_ao.format import check_layout, k_normal_padded, unpack_int4
from atom_ao.weight import quantize_weight

aten = torch.ops.aten

__all__ = ["AtomQuantTensor"]


class AtomQuantTensor(TorchAOBaseTensor):
    """Weight of shape (N, K) stored as Atom W4A4.

    Tensor data:
        qdata: (N, Kp / 2) uint8, normal channels as packed INT4 (Kp: K - n_outliers padded to
            whole groups; layout in ``atom_ao.format``)
        scale: (N, Kp / group_size) float32, per (row, group)
        outlier_qdata: (N, n_outliers) int8, outlier channels
        outlier_scale: (N,) float32, per row
        perm: (K,) int32, new position -> original input channel; outliers last
    Attributes:
        group_size: INT4 group size along K
        act_clip_ratio: clip ratio of the dynamic per-token INT4 activation quantization
        dtype: the logical (activation / output) dtype
    The logical shape (N, K) follows from the data: N = qdata rows, K = perm length.
    """

    tensor_data_names = ["qdata", "scale", "outlier_qdata", "outlier_scale", "perm"]
    tensor_attribute_names = ["group_size", "act_clip_ratio", "dtype"]

    def __new__(cls, qdata, scale, outlier_qdata, outlier_scale, perm, group_size, act_clip_ratio, dtype):
        shape = (qdata.shape[0], perm.shape[0])
        return torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=dtype, device=qdata.device, requires_grad=False
        )

    def __init__(self, qdata, scale, outlier_qdata, outlier_scale, perm, group_size, act_clip_ratio, dtype):
        super().__init__()
        self.qdata = qdata
        self.scale = scale
        self.outlier_qdata = outlier_qdata
        self.outlier_scale = outlier_scale
        self.perm = perm
        self.group_size = group_size
        self.act_clip_ratio = act_clip_ratio

    @property
    def n_outliers(self) -> int:
        return self.outlier_qdata.shape[1]

    def __repr__(self):
        n, k = self.shape
        return (
            f"AtomQuantTensor(shape=({n}, {k}), dtype={self.dtype}, device={self.device}, "
            f"group_size={self.group_size}, n_outliers={self.n_outliers}, "
            f"int4_groups={self.scale.shape[1]}, act_clip_ratio={self.act_clip_ratio})"
        )

    @classmethod
    def from_hp(
        cls,
        weight: torch.Tensor,
        perm: torch.Tensor,
        n_outliers: int = 128,
        group_size: int = 128,
        weight_clip_ratio: float | None = None,
        act_clip_ratio: float = 0.9,
        importance: torch.Tensor | None = None,
        what: str = "weight",
    ) -> "AtomQuantTensor":
        """Quantize a float (N, K) weight with a given outlier permutation."""
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"{what}: expected a 2-D floating weight, got {tuple(weight.shape)} {weight.dtype}")
        if perm.shape != (weight.shape[1],):
            raise ValueError(f"{what}: perm has shape {tuple(perm.shape)}, expected ({weight.shape[1]},)")
        t = quantize_weight(weight, perm, n_outliers, group_size, weight_clip_ratio, importance, what)
        return cls(**t, group_size=group_size, act_clip_ratio=act_clip_ratio, dtype=weight.dtype)

    def _stable_hash_for_caching(self) -> str:
        """Key for the AOT autograd cache: layout and metadata, not the values."""
        parts = [type(self).__qualname__, str(tuple(self.shape)), str(self.dtype), str(self.group_size),
                 repr(self.act_clip_ratio)]
        for name in self.tensor_data_names:
            t = getattr(self, name)
            parts.append(f"{name}:{tuple(t.shape)}:{t.stride()}:{t.dtype}:{t.device.type}")
        return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()

    def dequantize(self, output_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Back to a float (N, K) weight in the original channel order."""
        n, k = self.shape
        kn = k - self.n_outliers
        g = self.scale.shape[1]
        q = unpack_int4(self.qdata, self.group_size).float().reshape(n, g, self.group_size)
        normal = (q * self.scale[..., None]).reshape(n, -1)[:, :kn]
        outl = self.outlier_qdata.float() * self.outlier_scale[:, None]
        permuted = torch.cat([normal, outl], dim=1)
        out = torch.empty_like(permuted)
        out[:, self.perm.long()] = permuted
        return out.to(output_dtype or self.dtype)


implements = AtomQuantTensor.implements
implements_torch_function = AtomQuantTensor.implements_torch_function


def atom_linear(x: torch.Tensor, w: AtomQuantTensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x @ w.T + bias through the two atom_ao ops (quantize activations, then the GEMM)."""
    k = w.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"atom_ao linear: input has {x.shape[-1]} features, weight expects {k}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"atom_ao linear: activations must be fp16/bf16/fp32, got {x.dtype}")
    if x.device != w.qdata.device:
        raise ValueError(f"atom_ao linear: input on {x.device}, weight on {w.qdata.device}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    a = torch.ops.atom_ao.quantize_activation(x2, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio)
    y = torch.ops.atom_ao.w4a4_gemm(
        *a, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, bias, w.group_size, x.dtype
    )
    return y.reshape(*lead, w.shape[0])


@implements(aten.linear.default)
@implements_torch_function(torch.nn.functional.linear)
def _(func, types, args, kwargs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return atom_linear(x, w, bias)


@implements(aten.slice.Tensor)
def _(func, types, args, kwargs):
    """Slicing along the output dim (for sharding) slices every per-row tensor."""
    self, dim, start, end, step = fill_defaults(args, 5, [0, None, None, 1])
    if dim != 0:
        raise NotImplementedError(
            "AtomQuantTensor can only be sliced along the output dim (0); slicing K would split "
            "INT4 groups and the outlier block"
        )
    if step != 1:
        raise NotImplementedError("AtomQuantTensor: slicing with step != 1 is not supported")
    rows = lambda t: aten.slice.Tensor(t, 0, start, end, step)  # noqa: E731
    new = AtomQuantTensor(
        rows(self.qdata), rows(self.scale), rows(self.outlier_qdata), rows(self.outlier_scale),
        self.perm, self.group_size, self.act_clip_ratio, self.dtype,
    )
    return return_and_correct_aliasing(func, args, kwargs, new)


@implements(aten._to_copy.default)
def _(func, types, args, kwargs):
    """``.to(device)`` moves the data; ``.to(dtype)`` changes the logical (activation) dtype."""
    self = args[0]
    dtype = kwargs.get("dtype") or self.dtype
    device = kwargs.get("device") or self.device
    if not dtype.is_floating_point:
        raise TypeError(f"AtomQuantTensor cannot become {dtype}; use dequantize()")
    move = lambda t: t.to(device)  # noqa: E731
    new = AtomQuantTensor(
        move(self.qdata), move(self.scale), move(self.outlier_qdata), move(self.outlier_scale),
        move(self.perm), self.group_size, self.act_clip_ratio, dtype,
    )
    return return_and_correct_aliasing(func, args, kwargs, new)


def _check_consistent(t: AtomQuantTensor) -> None:
    """Used by deserialization: refuse tensors whose parts disagree."""
    n, k = t.shape
    check_layout(k, t.n_outliers, t.group_size, "AtomQuantTensor")
    kp = k_normal_padded(k, t.n_outliers, t.group_size)
    expect = {
        "qdata": ((n, kp // 2), torch.uint8),
        "scale": ((n, kp // t.group_size), torch.float32),
        "outlier_qdata": ((n, t.n_outliers), torch.int8),
        "outlier_scale": ((n,), torch.float32),
        "perm": ((k,), torch.int32),
    }
    for name, (shape, dtype) in expect.items():
        v = getattr(t, name)
        if tuple(v.shape) != shape or v.dtype != dtype:
            raise ValueError(f"AtomQuantTensor.{name}: got {tuple(v.shape)} {v.dtype}, expected {shape} {dtype}")


# torch.load(weights_only=True) may rebuild these, and only these, atom_ao classes.
torch.serialization.add_safe_globals([AtomQuantTensor])

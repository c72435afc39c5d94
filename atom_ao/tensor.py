"""``AtomQuantTensor``: a linear weight in the Atom W4A4 format (see ``atom_ao.format``)."""

from __future__ import annotations

import hashlib

import torch
from torch.utils._python_dispatch import return_and_correct_aliasing
from torch.multiprocessing.reductions import StorageWeakRef
from torchao.utils import TorchAOBaseTensor, fill_defaults

import atom_ao.ops  # noqa: F401  (registers torch.ops.atom_ao.*)
from atom_ao.ops.quantize_activation import quantize_activation_triton
from atom_ao.ops.w4a4_gemm import check_gemm_args, w4a4_gemm_triton
from atom_ao.format import check_layout, k_normal_padded, unpack_int4, weight_group_sums
from atom_ao.weight import quantize_weight

aten = torch.ops.aten

try:  # the flag triton_op's CUDA kernels run under: launch, do not build the tracing HOP
    from torch._library.triton import set_wrap_triton_enabled as _set_wrap_triton_enabled

    def _no_wrap_triton():
        return _set_wrap_triton_enabled(False)

    _CAN_LAUNCH_DIRECTLY = True
except ImportError:  # pragma: no cover  (a torch without the flag: always through the ops)
    _CAN_LAUNCH_DIRECTLY = False

__all__ = ["AtomQuantTensor"]


class _AtomPackedTensor(TorchAOBaseTensor):
    """The data and attributes shared by ``AtomQuantTensor`` and ``AtomQuantTensorTransposed``
    (documented on ``AtomQuantTensor``); a subclass says only how its logical shape follows
    from the data (``_logical_shape``)."""

    tensor_data_names = ["qdata", "scale", "outlier_qdata", "outlier_scale", "perm"]
    tensor_attribute_names = ["group_size", "act_clip_ratio", "dtype"]

    @staticmethod
    def _logical_shape(qdata: torch.Tensor, perm: torch.Tensor) -> tuple[int, int]:
        raise NotImplementedError

    def __new__(cls, qdata, scale, outlier_qdata, outlier_scale, perm, group_size, act_clip_ratio, dtype):
        return torch.Tensor._make_wrapper_subclass(
            cls, cls._logical_shape(qdata, perm), dtype=dtype, device=qdata.device, requires_grad=False
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

    def __tensor_flatten__(self):
        # TorchAOBaseTensor's generic form, without its hasattr probes for optional fields (none here):
        # a compiled model calls this for every quantized weight on every call (Dynamo's metadata guard,
        # and AOTAutograd's unwrap of subclass inputs): 1.8 us against 2.3 on this project's 2-core CPU
        return list(self.tensor_data_names), {"group_size": self.group_size,
                                              "act_clip_ratio": self.act_clip_ratio, "dtype": self.dtype}


class AtomQuantTensor(_AtomPackedTensor):
    """Weight of shape (N, K) stored as Atom W4A4.

    Tensor data:
        qdata: (N, Kp / 2) uint8, normal channels as packed INT4 (Kp: K - n_outliers padded to
            whole groups; layout in ``atom_ao.format``)
        scale: (N, G) float32, per (row, group), G = Kp / group_size; with asymmetric
            activations (N, 2 G): ``[scales | weight_group_sums]``, the second half the factor
            of the activations' zero points in the GEMM (``atom_ao.format``)
        outlier_qdata: (N, n_outliers) int8, outlier channels
        outlier_scale: (N,) float32, per row
        perm: (K,) int32, new position -> original input channel; outliers last
    Attributes:
        group_size: INT4 group size along K
        act_clip_ratio: clip ratio of the dynamic per-token INT4 activation quantization
        dtype: the logical (activation / output) dtype
    The logical shape (N, K) follows from the data: N = qdata rows, K = perm length.
    """

    tensor_data_names = _AtomPackedTensor.tensor_data_names
    tensor_attribute_names = _AtomPackedTensor.tensor_attribute_names

    @staticmethod
    def _logical_shape(qdata, perm):
        return (qdata.shape[0], perm.shape[0])

    @property
    def n_outliers(self) -> int:
        return self.outlier_qdata.shape[1]

    @property
    def groups(self) -> int:
        """INT4 groups per row (G)."""
        return self.qdata.shape[1] * 2 // self.group_size

    @property
    def act_asymmetric(self) -> bool:
        """Whether activations are quantized with zero points (the scale tensor holds 2 G)."""
        return self.scale.shape[1] == 2 * self.groups

    @property
    def weight_scale(self) -> torch.Tensor:
        """(N, G) the INT4 weight scales (a view of ``scale``)."""
        return self.scale[:, : self.groups]

    def with_asymmetric_activations(self) -> "AtomQuantTensor":
        """This weight with asymmetric activations: the scale tensor gains the weight's group
        sums (``atom_ao.format.weight_group_sums``); the weight's own codes do not change."""
        if self.act_asymmetric:
            return self
        sums = weight_group_sums(self.qdata, self.scale, self.group_size)
        return AtomQuantTensor(self.qdata, torch.cat([self.scale, sums], dim=1), self.outlier_qdata,
                               self.outlier_scale, self.perm, self.group_size, self.act_clip_ratio, self.dtype)

    def __repr__(self):
        n, k = self.shape
        return (
            f"AtomQuantTensor(shape=({n}, {k}), dtype={self.dtype}, device={self.device}, "
            f"group_size={self.group_size}, n_outliers={self.n_outliers}, "
            f"int4_groups={self.groups}, act_clip_ratio={self.act_clip_ratio}"
            f"{', act_mapping=asymmetric' if self.act_asymmetric else ''})"
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
        g = self.groups
        q = unpack_int4(self.qdata, self.group_size).float().reshape(n, g, self.group_size)
        normal = (q * self.weight_scale[..., None]).reshape(n, -1)[:, :kn]
        outl = self.outlier_qdata.float() * self.outlier_scale[:, None]
        permuted = torch.cat([normal, outl], dim=1)
        out = torch.empty_like(permuted)
        out[:, self.perm.long()] = permuted
        return out.to(output_dtype or self.dtype)


implements = AtomQuantTensor.implements
implements_torch_function = AtomQuantTensor.implements_torch_function


def check_linear_input(x: torch.Tensor, k: int, device: torch.device) -> None:
    if x.shape[-1] != k:
        raise ValueError(f"atom_ao linear: input has {x.shape[-1]} features, weight expects {k}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"atom_ao linear: activations must be fp16/bf16/fp32, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"atom_ao linear: input on {x.device}, weight on {device}")


def atom_linear(x: torch.Tensor, w: AtomQuantTensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x @ w.T + bias through the two atom_ao ops (quantize activations, then the GEMM)."""
    check_linear_input(x, w.shape[1], w.qdata.device)
    if w.act_asymmetric:
        lead = x.shape[:-1]
        return _asymmetric_linear(x.reshape(-1, w.shape[1]), w, bias).reshape(*lead, w.shape[0])
    return linear_from_parts(x, w.qdata, w.scale, w.outlier_qdata, w.outlier_scale, w.perm, bias,
                             w.group_size, w.act_clip_ratio)


def linear_from_parts(x, qdata, scale, outlier_qdata, outlier_scale, perm, bias, group_size: int,
                      act_clip_ratio: float) -> torch.Tensor:
    """``atom_linear`` on a symmetric weight given as its five tensors (``AtomQuantTensor`` or
    ``atom_ao.unwrap.AtomLinear``'s buffers); the input is checked by the caller."""
    k, n, n_out = perm.shape[0], qdata.shape[0], outlier_qdata.shape[1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if _direct_launch_ok(x2, bias):
        with _no_wrap_triton():
            a = quantize_activation_triton(x2, perm, n_out, group_size, act_clip_ratio)
            wargs = (qdata, scale, outlier_qdata, outlier_scale, bias)
            # the CUDA body of atom_ao::w4a4_gemm, repeated: moving it into a shared helper hides
            # the op's Triton kernels from torch's triton_op kernel discovery (export/AOTI)
            check_gemm_args(*a, *wargs, group_size)
            y = w4a4_gemm_triton(*a, *wargs, group_size, x.dtype)
        return y.reshape(*lead, n)
    a = torch.ops.atom_ao.quantize_activation(x2, perm, n_out, group_size, act_clip_ratio)
    y = torch.ops.atom_ao.w4a4_gemm(*a, qdata, scale, outlier_qdata, outlier_scale, bias, group_size, x.dtype)
    return y.reshape(*lead, n)


def _asymmetric_linear(x2: torch.Tensor, w: AtomQuantTensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Asymmetric activations: the GEMM on the codes (float32 out), plus the zero points times the
    weight's group sums, (M, G) @ (G, N): a small matmul of its own (not yet inside the GEMM)."""
    g = w.groups
    a = torch.ops.atom_ao.quantize_activation(x2, w.perm, w.n_outliers, w.group_size, w.act_clip_ratio, True)
    y = torch.ops.atom_ao.w4a4_gemm(a[0], a[1][:, :g], a[2], a[3], w.qdata, w.weight_scale, w.outlier_qdata,
                                    w.outlier_scale, bias, w.group_size, torch.float32)
    return torch.addmm(y, a[1][:, g:], w.scale[:, g:].t()).to(x2.dtype)


# Eager calls launch the two Triton kernels directly: the same code the ops' CUDA kernels run,
# without torch.library's custom-op dispatch around each, which cost ~90 us (quantize) and
# ~200 us (GEMM) of CPU time per call on the H200 (scripts/eager_linear_overhead.py), 10x a bf16
# F.linear. Anything that must see the ops (torch.compile, export, fake/functional tensors,
# dispatch modes, the profiler, autograd) still goes through torch.ops.atom_ao.*.
EAGER_DIRECT_LAUNCH = True


def _direct_launch_ok(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        EAGER_DIRECT_LAUNCH
        and _CAN_LAUNCH_DIRECTLY
        and x.is_cuda
        and type(x) is torch.Tensor
        and (bias is None or type(bias) in (torch.Tensor, torch.nn.Parameter))
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and not torch._C._autograd._profiler_enabled()
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


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


# A permutation's storage (and view) -> its copy on a device. ``model.to(device)`` moves each
# weight on its own; without this, weights that shared one permutation tensor (q/k/v, gate/up:
# atom_ao's flows give them one) would each get a copy, and the Inductor pass, which quantizes an
# activation once only for weights sharing one permutation *storage*, would keep a quantizer per
# weight. Keyed by a weak reference to the storage (the weights hold views of it, not one object);
# while that reference lives the storage's address cannot be reused, and an expired one misses.
_MOVED_PERMS: dict = {}


def _move_perm(perm: torch.Tensor, device) -> torch.Tensor:
    moved = perm.to(device)
    if moved is perm or type(perm) is not torch.Tensor or perm.is_meta or torch.compiler.is_compiling():
        return moved  # nothing moved, no storage to key on, or fake / functional tensors while tracing
    ref = StorageWeakRef(perm.untyped_storage())
    key = (ref.cdata, perm.storage_offset(), tuple(perm.shape), perm.stride(), moved.device)
    hit = _MOVED_PERMS.get(key)
    if hit is not None and not hit[0].expired():
        return hit[1]  # permutations are never written in place
    for k in [k for k, (r, _) in _MOVED_PERMS.items() if r.expired()]:
        del _MOVED_PERMS[k]
    _MOVED_PERMS[key] = (ref, moved)
    return moved


@implements(aten._to_copy.default)
def _(func, types, args, kwargs):
    """``.to(device)`` moves the data; ``.to(dtype)`` changes the logical (activation) dtype.
    Weights that shared a permutation tensor still share one after the move."""
    self = args[0]
    dtype = kwargs.get("dtype") or self.dtype
    device = kwargs.get("device") or self.device
    if not dtype.is_floating_point:
        raise TypeError(f"AtomQuantTensor cannot become {dtype}; use dequantize()")
    move = lambda t: t.to(device)  # noqa: E731
    new = AtomQuantTensor(
        move(self.qdata), move(self.scale), move(self.outlier_qdata), move(self.outlier_scale),
        _move_perm(self.perm, device), self.group_size, self.act_clip_ratio, dtype,
    )
    return return_and_correct_aliasing(func, args, kwargs, new)


def _check_consistent(t: AtomQuantTensor) -> None:
    """Used by deserialization: refuse tensors whose parts disagree."""
    n, k = t.shape
    check_layout(k, t.n_outliers, t.group_size, "AtomQuantTensor")
    kp = k_normal_padded(k, t.n_outliers, t.group_size)
    expect = {
        "qdata": ((n, kp // 2), torch.uint8),
        "scale": ((n, (2 if t.scale.shape[1] == 2 * (kp // t.group_size) else 1) * (kp // t.group_size)),
                  torch.float32),
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


# ---------------------------------------------------------------- composition with FSDP2 / DTensor
#
# Everything below is additive: ops that FSDP2 (``fully_shard``) and DTensor tensor parallelism
# call on a parameter. Only the output dim (0) can be split: every per-row tensor (qdata, scale,
# outlier_qdata, outlier_scale) is split with it and the permutation (shared by all rows) is
# kept whole. Splitting K would cut INT4 groups and the outlier block; K-sharding for row-wise
# tensor parallelism is done by ``atom_ao.distributed.shard_k``, which knows the group layout.

_ROW_TENSORS = ("qdata", "scale", "outlier_qdata", "outlier_scale")


def _with_rows(t: AtomQuantTensor, fn, dtype: torch.dtype | None = None) -> AtomQuantTensor:
    """A new AtomQuantTensor whose per-row tensors are ``fn(tensor)``; same perm and attributes."""
    rows = [fn(getattr(t, name)) for name in _ROW_TENSORS]
    return AtomQuantTensor(*rows, t.perm, t.group_size, t.act_clip_ratio, dtype or t.dtype)


def _dim0_only(op: str, dim: int, ndim: int = 2) -> None:
    if dim < 0:
        dim += ndim
    if dim != 0:
        raise NotImplementedError(
            f"AtomQuantTensor: {op} along dim {dim} is not supported; only the output dim (0) can be "
            "split (K holds whole INT4 groups, the outlier block and a permutation). For row-wise "
            "tensor parallelism use atom_ao.distributed.AtomRowwiseParallel"
        )


def _alias(func, args, kwargs, t: AtomQuantTensor):
    return return_and_correct_aliasing(func, args, kwargs, _with_rows(t, lambda x: x))


@implements([aten.split.Tensor, aten.split_with_sizes.default])
def _(func, types, args, kwargs):
    """``torch.chunk`` / ``torch.split`` along the output dim (how FSDP2 and DTensor shard dim 0)."""
    self, sizes = args[0], args[1]
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    _dim0_only("split", dim)
    n = self.shape[0]
    if isinstance(sizes, int):
        sizes = [min(sizes, n - s) for s in range(0, n, sizes)] if n else [0]
    out, start = [], 0
    for size in sizes:
        out.append(_with_rows(self, lambda x, s=start, e=start + size: x[s:e]))
        start += size
    return out


@implements(aten.new_zeros.default)
def _(func, types, args, kwargs):
    """A zero AtomQuantTensor with ``size[0]`` rows (FSDP2 pads shards with it); K must not change."""
    self, size = args[0], list(args[1])
    if len(size) != 2 or size[1] != self.shape[1]:
        raise NotImplementedError(
            f"AtomQuantTensor.new_zeros: only ({'rows'}, {self.shape[1]}) is supported (whole rows, "
            f"same K), got {tuple(size)}"
        )
    dtype = kwargs.get("dtype") or self.dtype
    device = kwargs.get("device") or self.device
    rows = [torch.zeros((size[0], *getattr(self, name).shape[1:]), dtype=getattr(self, name).dtype, device=device)
            for name in _ROW_TENSORS]
    return AtomQuantTensor(*rows, self.perm.to(device), self.group_size, self.act_clip_ratio, dtype)


@implements(aten.new_empty.default)
def _(func, types, args, kwargs):
    size = list(args[1])
    if size == [0]:  # FSDP2 asks for an empty shard when a rank gets no rows
        raise NotImplementedError(
            f"AtomQuantTensor of shape {tuple(args[0].shape)}: every rank needs at least one output row; "
            "shard it over fewer ranks"
        )
    return aten.new_zeros.default(*args, **kwargs)


@implements(aten.view.default)
def _(func, types, args, kwargs):
    """Only the identity view (DTensor.from_local calls ``view_as``) and the flat view FSDP2 keeps
    as a bookkeeping handle of the padded shard (``view(-1)``; it never reads it for tensors with
    ``fsdp_pre_all_gather``). Packed INT4 has no element-wise flat layout, so the flat view is an
    alias of the whole tensor, still 2-D."""
    self, size = args[0], list(args[1])
    n, k = self.shape
    if size in ([n, k], [-1, k], [n, -1], [-1], [n * k]):
        return _alias(func, args, kwargs, self)
    raise NotImplementedError(f"AtomQuantTensor: view{tuple(size)} of shape {(n, k)} is not supported")


@implements(aten.as_strided.default)
def _(func, types, args, kwargs):
    """FSDP2 re-views the unsharded parameter as (N, K) contiguous: an alias; nothing else."""
    self, size, stride = args[0], tuple(args[1]), tuple(args[2])
    offset = args[3] if len(args) > 3 else kwargs.get("storage_offset", 0)
    n, k = self.shape
    if size != (n, k) or stride != (k, 1) or offset not in (0, None):
        raise NotImplementedError(
            f"AtomQuantTensor: as_strided(size={size}, stride={stride}, offset={offset}) is not supported; "
            f"only the contiguous ({n}, {k}) view"
        )
    return _alias(func, args, kwargs, self)


@implements(aten.cat.default)
def _(func, types, args, kwargs):
    """Concatenate whole rows of AtomQuantTensors with the same K layout and permutation."""
    tensors = list(args[0])
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    _dim0_only("cat", dim)
    first = tensors[0]
    for t in tensors[1:]:
        if not isinstance(t, AtomQuantTensor):
            raise NotImplementedError("AtomQuantTensor: cat with a non-AtomQuantTensor")
        same = (t.group_size, t.act_clip_ratio, t.dtype, t.shape[1], t.n_outliers) == (
            first.group_size, first.act_clip_ratio, first.dtype, first.shape[1], first.n_outliers)
        if not same or not (t.perm is first.perm or torch.equal(t.perm, first.perm)):
            raise ValueError("AtomQuantTensor: cat needs the same group_size, clip ratio, dtype and permutation")
    rows = [torch.cat([getattr(t, name) for t in tensors], dim=0) for name in _ROW_TENSORS]
    return AtomQuantTensor(*rows, first.perm, first.group_size, first.act_clip_ratio, first.dtype)


# DTensor.redistribute / full_tensor of a Shard(0) weight: the functional all-gather concatenates
# along dim 0, which is a row concatenation of every per-row tensor.
@implements([torch.ops._c10d_functional.all_gather_into_tensor.default,
             torch.ops._c10d_functional.wait_tensor.default])
def _(func, types, args, kwargs):
    self = args[0]
    return _with_rows(self, lambda x: func(x, *args[1:], **kwargs))


def _wait_now(func, types, args, kwargs):
    # funcol wraps collective results into AsyncCollectiveTensor (a plain-tensor wrapper): for
    # an AtomQuantTensor, wait for each part now instead
    return _with_rows(args[0], torch.ops._c10d_functional.wait_tensor.default)


if hasattr(torch.ops._c10d_functional, "_wrap_tensor_autograd"):
    implements(torch.ops._c10d_functional._wrap_tensor_autograd.default)(_wait_now)


def _fsdp_pre_all_gather(self, mesh, outer_size=None, outer_stride=None, module=None, mp_policy=None):
    """FSDP2 all-gather extension: gather the packed per-row tensors, not a dequantized weight.

    The permutation is identical on every rank (it belongs to the whole weight), so it travels
    as metadata, not through the collective. An all-gathered row costs Kp/2 + 4*Kp/group_size +
    n_outliers + 4 bytes instead of 2*K for bf16 (about 3.7x fewer for K=4096, n_outliers=128).
    """
    world = mesh.size()
    if outer_size is not None and outer_size[0] % world:
        raise ValueError(
            f"fully_shard of an AtomQuantTensor of shape {tuple(outer_size)}: the output dim must be divisible "
            f"by the FSDP world size {world} (FSDP2 pads uneven shards to the same shape, which packed "
            "extension tensors cannot be)"
        )
    inputs = [self.qdata, self.scale, self.outlier_scale]
    if self.n_outliers:  # a (rows, 0) tensor cannot be unflattened by FSDP2
        inputs.append(self.outlier_qdata)
    return tuple(inputs), (self.perm, self.group_size, self.act_clip_ratio, self.n_outliers)


def _fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
    """Rebuild the unsharded AtomQuantTensor as views of FSDP2's all-gather buffers.

    FSDP2 frees and refills those buffers in place between forwards, so on later calls (``out``
    given) the tensor built the first time is already up to date.
    """
    perm, group_size, act_clip_ratio, n_outliers = metadata
    if out is not None:
        if not isinstance(out, AtomQuantTensor):
            raise TypeError(f"fsdp_post_all_gather: expected an AtomQuantTensor out, got {type(out)}")
        return None
    qdata, scale, outlier_scale = all_gather_outputs[:3]
    if n_outliers:
        outlier_qdata = all_gather_outputs[3]
    else:
        outlier_qdata = torch.zeros((qdata.shape[0], 0), dtype=torch.int8, device=qdata.device)
    t = AtomQuantTensor(qdata, scale, outlier_qdata, outlier_scale, perm, group_size, act_clip_ratio, param_dtype)
    return t, tuple(all_gather_outputs)


AtomQuantTensor.fsdp_pre_all_gather = _fsdp_pre_all_gather
AtomQuantTensor.fsdp_post_all_gather = _fsdp_post_all_gather


class AtomQuantTensorTransposed(_AtomPackedTensor):
    """``w.t()`` of an ``AtomQuantTensor``, shape (K, N).

    DTensor runs ``F.linear`` as ``aten.t`` + ``aten.mm`` / ``aten.addmm`` on the local shards;
    this tensor exists only to be the right operand of those (and ``t()`` back). It holds the
    same data as the weight it came from.
    """

    tensor_data_names = _AtomPackedTensor.tensor_data_names
    tensor_attribute_names = _AtomPackedTensor.tensor_attribute_names

    @staticmethod
    def _logical_shape(qdata, perm):
        return (perm.shape[0], qdata.shape[0])

    def weight(self) -> AtomQuantTensor:
        return AtomQuantTensor(*(getattr(self, n) for n in self.tensor_data_names), self.group_size,
                               self.act_clip_ratio, self.dtype)

    def __repr__(self):
        return f"AtomQuantTensorTransposed(of {self.weight()!r})"


def _swap_class(t, cls):
    return cls(*(getattr(t, n) for n in t.tensor_data_names), t.group_size, t.act_clip_ratio, t.dtype)


# (t() returns a tensor of the other class, sharing the data; return_and_correct_aliasing
# insists on one class, so the view relation is not recorded.)
@implements(aten.t.default)
def _(func, types, args, kwargs):
    return _swap_class(args[0], AtomQuantTensorTransposed)


@AtomQuantTensorTransposed.implements(aten.t.default)
def _(func, types, args, kwargs):
    return _swap_class(args[0], AtomQuantTensor)


@AtomQuantTensorTransposed.implements(aten.mm.default)
def _(func, types, args, kwargs):
    x, wt = args[0], args[1]
    if isinstance(x, AtomQuantTensorTransposed) or not isinstance(wt, AtomQuantTensorTransposed):
        raise NotImplementedError("AtomQuantTensor: only x @ w.t() is supported")
    return atom_linear(x, wt.weight(), None)


@AtomQuantTensorTransposed.implements(aten.addmm.default)
def _(func, types, args, kwargs):
    bias, x, wt = args[0], args[1], args[2]
    beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
    if beta != 1 or alpha != 1 or not isinstance(wt, AtomQuantTensorTransposed):
        raise NotImplementedError("AtomQuantTensor: only addmm(bias, x, w.t()) with beta = alpha = 1 is supported")
    if bias.dim() != 1:
        return atom_linear(x, wt.weight(), None) + bias
    return atom_linear(x, wt.weight(), bias)

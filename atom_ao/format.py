"""The Atom W4A4 format, in plain PyTorch: the spec every kernel is tested against.

A linear's input dimension K is split by a permutation ``perm`` (new position -> original
channel) into

* ``K - n_outliers`` *normal* channels, zero-padded up to ``k_normal_padded`` (a multiple of
  ``group_size``) and quantized to symmetric INT4 in groups of ``group_size`` along K:
  weights per (output row, group), activations per (token, group), both ``scale = clip *
  absmax / 7`` and ``q = clamp(round(x / scale), -8, 7)``;
* ``n_outliers`` *outlier* channels at the end, quantized to symmetric INT8: weights per output
  row, activations per token, ``scale = absmax / 127``.

Packed INT4 layout (``pack_int4``): two values per byte along K. Inside each group of
``group_size`` values, byte ``j`` (0 <= j < group_size / 2) holds element ``j`` in its low
nibble and element ``j + group_size / 2`` in its high nibble (two's complement nibbles).
A GEMM kernel loads a ``(rows, group_size / 2)`` byte tile, sign-extends the low and the high
nibbles into two INT8 tiles, and issues two dots (first half-group, second half-group) with
no interleaving: the same layout on both operands makes the two half dots add up to the
group dot.

Scales are float32. A zero group gets scale 0 and q 0 (dequantizes to 0, never NaN); a NaN
anywhere in a group makes that group's scale NaN, so NaN in gives NaN out. The Triton
quantizers store the (M, G) activation scales group by group (strides (1, M); the reference
returns them row-major): the same values, which every GEMM path reads by their strides.

Asymmetric activations (``AtomConfig(act_mapping="asymmetric")``, not the paper's): the normal
groups of activations get a float zero point too, ``x ~ scale * q + zero`` with ``lo = clip *
min``, ``hi = clip * max``, ``scale = (hi - lo) / 15``, ``u = clamp(round((x - lo) / scale), 0,
15)``, ``q = u - 8`` (the same signed nibbles, so the GEMM kernels do not change) and ``zero = lo
+ 8 * scale``. The scale tensor then holds ``[scales | zeros]`` (M, 2 G), and the GEMM adds
``zeros @ S^T`` where ``S[n, g]`` is weight row n's dequantized sum over group g, stored the same
way in the weight's scale tensor (N, 2 G) (``weight_group_sums``). The INT8 outliers stay
symmetric.
"""

from __future__ import annotations

import torch

INT4_MIN, INT4_MAX = -8, 7
INT8_MAX = 127


def k_normal_padded(k: int, n_outliers: int, group_size: int) -> int:
    """Width of the normal part after zero-padding to whole groups."""
    k_normal = k - n_outliers
    return -(-k_normal // group_size) * group_size


def check_layout(k: int, n_outliers: int, group_size: int, what: str = "tensor") -> None:
    """Refuse shapes the format cannot hold, naming ``what`` (usually the layer)."""
    if group_size <= 0 or group_size % 32 != 0:
        raise ValueError(f"{what}: group_size must be a positive multiple of 32, got {group_size}")
    if n_outliers < 0 or n_outliers % 16 != 0:
        raise ValueError(f"{what}: n_outliers must be a multiple of 16 (>= 0), got {n_outliers}")
    if k <= n_outliers:
        raise ValueError(
            f"{what}: in_features={k} must exceed n_outliers={n_outliers}; "
            "lower n_outliers or leave this layer out with quantize_'s filter_fn"
        )


# ---------------------------------------------------------------- packing


def pack_int4(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """(rows, K) int8 in [-8, 7], K a multiple of group_size -> (rows, K // 2) uint8."""
    rows, k = q.shape
    if k % group_size:
        raise ValueError(f"pack_int4: K={k} is not a multiple of group_size={group_size}")
    half = group_size // 2
    g = q.reshape(rows, k // group_size, 2, half).to(torch.uint8) & 0xF
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(rows, k // 2)


def unpack_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of ``pack_int4``: (rows, K // 2) uint8 -> (rows, K) int8."""
    rows, kh = packed.shape
    half = group_size // 2
    b = packed.reshape(rows, kh // half, 1, half).view(torch.int8)
    low = (b << 4) >> 4  # arithmetic shift sign-extends the low nibble
    high = b >> 4
    return torch.cat([low, high], dim=2).reshape(rows, kh * 2)


# ---------------------------------------------------------------- quantization primitives


def _safe_inverse(scale: torch.Tensor) -> torch.Tensor:
    # zero scale (all-zero group) -> multiply by 0; NaN/inf scales stay NaN/0 and show up
    # through the scale at dequantization time.
    return torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))


def _round_clamp(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    # NaN cannot be stored in an integer; the group's scale carries it instead.
    return torch.nan_to_num(torch.round(x), nan=0.0).clamp(lo, hi).to(torch.int8)


def quantize_int4_groups(
    x: torch.Tensor, group_size: int, clip_ratio: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT4 per (row, group): (rows, K) -> (int8 q (rows, K), f32 scale (rows, K/gs)).

    ``clip_ratio`` is a float or a (rows, K/gs) tensor (a searched per-group ratio).
    """
    rows, k = x.shape
    xg = x.float().reshape(rows, k // group_size, group_size)
    amax = xg.abs().amax(dim=-1)  # propagates NaN
    scale = amax * clip_ratio / INT4_MAX
    q = _round_clamp(xg * _safe_inverse(scale)[..., None], INT4_MIN, INT4_MAX)
    return q.reshape(rows, k), scale


def quantize_int4_groups_asym(
    x: torch.Tensor, group_size: int, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric INT4 per (row, group): (rows, K) -> (int8 q in [-8, 7], f32 scale, f32 zero),
    both (rows, K/gs), with x ~ scale * q + zero (module docstring). A constant group gets scale
    0 and dequantizes to its value; a NaN makes the group's scale NaN."""
    rows, k = x.shape
    xg = x.float().reshape(rows, k // group_size, group_size)
    lo = xg.amin(dim=-1) * clip_ratio  # propagates NaN
    hi = xg.amax(dim=-1) * clip_ratio
    scale = (hi - lo) / 15.0
    u = _round_clamp((xg - lo[..., None]) * _safe_inverse(scale)[..., None], 0, 15)
    return (u - 8).reshape(rows, k), scale, lo + 8.0 * scale  # 8 * scale is exact: one rounding


def weight_group_sums(w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, G) float32: each weight row's dequantized sum over each normal group, the factor of
    an asymmetric activation's zero point in the GEMM."""
    n, g = w_scale.shape
    q = unpack_int4(w_packed, group_size).float().reshape(n, g, group_size)
    return q.sum(dim=-1) * w_scale


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 per row: (rows, n) -> (int8 q (rows, n), f32 scale (rows,))."""
    xf = x.float()
    if xf.shape[1] == 0:
        return xf.to(torch.int8), torch.zeros(xf.shape[0], dtype=torch.float32, device=x.device)
    amax = xf.abs().amax(dim=-1)  # propagates NaN
    scale = amax / INT8_MAX
    q = _round_clamp(xf * _safe_inverse(scale)[:, None], -INT8_MAX, INT8_MAX)
    return q, scale


def permute_and_pad(x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int):
    """(rows, K) -> (normal part zero-padded to whole groups, outlier part), both float32."""
    k = x.shape[1]
    xp = x.index_select(1, perm).float()
    kn = k - n_outliers
    pad = k_normal_padded(k, n_outliers, group_size) - kn
    normal = torch.nn.functional.pad(xp[:, :kn], (0, pad))
    return normal, xp[:, kn:]


def quantize_activation_ref(
    x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int, clip_ratio: float,
    asymmetric: bool = False,
):
    """Reference of the run-time activation quantizer.

    (M, K) fp16/bf16/fp32 -> (packed int4 (M, Kp/2) uint8, scales (M, Kp/gs) f32,
    outliers (M, n_outliers) int8, outlier scales (M,) f32). ``asymmetric``: the scales are
    (M, 2 Kp/gs), ``[scales | zero points]`` (module docstring).
    """
    normal, outl = permute_and_pad(x, perm, n_outliers, group_size)
    if asymmetric:
        q, scale, zero = quantize_int4_groups_asym(normal, group_size, clip_ratio)
        scale = torch.cat([scale, zero], dim=1)
    else:
        q, scale = quantize_int4_groups(normal, group_size, clip_ratio)
    qo, scale_o = quantize_int8_rows(outl)
    return pack_int4(q, group_size), scale, qo, scale_o


def w4a4_gemm_ref(
    a_packed: torch.Tensor,
    a_scale: torch.Tensor,
    a_outliers: torch.Tensor,
    a_outlier_scale: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_outliers: torch.Tensor,
    w_outlier_scale: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Reference of the mixed INT4/INT8 GEMM: y = sum_g dot_g * sa_g * sw_g + dot_o * sa_o * sw_o.

    Each group's dot product is an exact integer. It is computed here with float32 (CPU) /
    float64 (other) matmuls whose every partial sum is an integer below 2**24 (INT4 groups:
    |sum| <= 64 * group_size), so it equals the INT32 dot exactly while using fast BLAS;
    the INT8 outlier dot is done in float64 (exact below 2**53).
    """
    m, n = a_packed.shape[0], w_packed.shape[0]
    groups = a_scale.shape[1]
    a = unpack_int4(a_packed, group_size).float().reshape(m, groups, group_size)
    w = unpack_int4(w_packed, group_size).float().reshape(n, groups, group_size)
    dots = torch.bmm(a.transpose(0, 1), w.permute(1, 2, 0))  # (G, M, N), exact integers
    y = torch.einsum("gmn,mg,ng->mn", dots, a_scale, w_scale)
    if a_outliers.shape[1] > 0:
        dot_o = (a_outliers.double() @ w_outliers.double().t()).float()
        y = y + dot_o * a_outlier_scale[:, None] * w_outlier_scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)

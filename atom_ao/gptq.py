"""GPTQ for the Atom format: error-compensating rounding of the weights.

Round-to-nearest (``atom_ao.weight.quantize_weight``) rounds every weight on its own. GPTQ
(Frantar et al., 2022) rounds the columns of a weight one at a time, in the permuted order of the
format, and after each column spreads its rounding error over the columns not yet rounded, so that
the layer's output on calibration activations moves as little as possible. With
``H = sum_t x_t x_t^T`` (input channels x input channels, the "Hessian" of ``||(W - W_hat) X||^2``)
and ``U`` the upper Cholesky factor of ``H^-1``, rounding column ``j`` to ``q_j`` updates the
remaining columns ``W[:, j+1:] -= (w_j - q_j) / U[j, j] * U[j, j+1:]``.

Atom specifics (Zhao et al., 2024, section 4 and appendix):

* order: the columns in the format's order, ``perm`` (normal channels first, in their groups of
  ``group_size``, then the outlier channels); the normal part is zero-padded to whole groups as in
  the format (padded columns are dead: weight 0, no effect on anything);
* normal groups: INT4 per (row, group); a group's scales are fixed when the group starts, from the
  group's weights *as updated by the errors of the earlier groups*, with the per-(row, group) clip
  search of ``weight.py`` (importance ``diag(H)``, i.e. the calibration sum of x^2 of the channels)
  or a fixed clip ratio; the lazy batch of the update is one group;
* outliers: the last ``n_outliers`` columns, rounded last to INT8 per row, the row scale fixed when
  the outlier block starts (they absorb the errors of all the INT4 groups, with 8-bit precision);
* damping: ``H += damp * mean(diag(H)) * I`` (``damp`` 0.1 by default, see ``AtomConfig.gptq_damp``), dead channels
  (``H[i, i] == 0``) get ``H[i, i] = 1`` and a zero weight.

The output is exactly the tensors that round-to-nearest produces (same shapes, dtypes, packing),
so every kernel, the serialization and the tensor-parallel code work unchanged.
"""

from __future__ import annotations

import torch

from atom_ao.format import (
    INT4_MAX,
    INT4_MIN,
    INT8_MAX,
    _safe_inverse,
    check_layout,
    k_normal_padded,
    pack_int4,
    permute_and_pad,
    quantize_int4_groups,
    quantize_int4_groups_asym,
    quantize_int8_rows,
)
from atom_ao.weight import _search_clip

DEFAULT_DAMP = 0.1


def fake_quantize_activation(x: torch.Tensor, perm: torch.Tensor, n_outliers: int, group_size: int,
                             clip_ratio: float, asymmetric: bool = False) -> torch.Tensor:
    """(M, K) -> the activations the W4A4 GEMM actually multiplies, dequantized, in the original
    channel order (float32): INT4 per (token, group) with ``clip_ratio`` (with a zero point if
    ``asymmetric``), INT8 outliers per token."""
    k = x.shape[1]
    kn = k - n_outliers
    normal, outl = permute_and_pad(x, perm, n_outliers, group_size)
    if asymmetric:
        q, s, z = quantize_int4_groups_asym(normal, group_size, clip_ratio)
    else:
        (q, s), z = quantize_int4_groups(normal, group_size, clip_ratio), None
    deq = q.float().reshape(q.shape[0], -1, group_size) * s[..., None]
    if z is not None:
        deq = deq + z[..., None]
    deq_n = deq.reshape(q.shape[0], -1)[:, :kn]
    qo, so = quantize_int8_rows(outl)
    permuted = torch.cat([deq_n, qo.float() * so[:, None]], dim=1)
    out = torch.empty_like(permuted)
    out[:, perm.long()] = permuted
    return out


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, in float64; retries with more
    damping if H is not positive definite (e.g. fewer calibration tokens than channels)."""
    h = h.double().clone()
    diag = h.diagonal()
    mean = diag.mean().item()
    if not mean > 0:
        mean = 1.0
    for extra in (1.0, 10.0, 100.0):
        try:
            hd = h + torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (damp * extra * mean)
            lower = torch.linalg.cholesky(hd)
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True)
        except RuntimeError:  # torch.linalg.LinAlgError subclasses RuntimeError
            continue
    raise RuntimeError("GPTQ: the Hessian is not positive definite even with 100x damping")


@torch.no_grad()
def gptq_quantize_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    perm: torch.Tensor,
    n_outliers: int,
    group_size: int,
    clip_ratio: float | None = None,
    damp: float = DEFAULT_DAMP,
    what: str = "weight",
) -> dict[str, torch.Tensor]:
    """(N, K) float weight + (K, K) Hessian (original channel order) -> the tensors of
    ``AtomQuantTensor`` (the same dict as ``weight.quantize_weight``).

    ``clip_ratio=None`` searches a clip ratio per (row, group) when each group starts (importance
    ``diag(H)``); a float fixes it.
    """
    n, k = weight.shape
    check_layout(k, n_outliers, group_size, what)
    if hessian.shape != (k, k):
        raise ValueError(f"{what}: Hessian of shape {tuple(hessian.shape)}, expected {(k, k)}")
    device = weight.device
    perm = perm.to(device)
    kn = k - n_outliers
    kp = k_normal_padded(k, n_outliers, group_size)
    pad = kp - kn
    groups = kp // group_size

    # working copy in the format's column order: [normal | zero pad | outliers]
    normal, outl = permute_and_pad(weight, perm, n_outliers, group_size)
    w = torch.cat([normal, outl], dim=1)  # (N, kp + n_outliers) float32
    p = perm.long()
    hp = hessian.to(device, torch.float64).index_select(0, p).index_select(1, p)
    width = kp + n_outliers
    h = torch.zeros(width, width, dtype=torch.float64, device=device)
    idx = torch.cat([torch.arange(kn, device=device), torch.arange(kp, width, device=device)])
    h[idx[:, None], idx[None, :]] = hp
    dead = h.diagonal() <= 0  # padded columns and channels that never saw a non-zero input
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    importance = h.diagonal().float().clone()
    importance[dead] = 0.0
    u = _inverse_hessian_factor(h, damp).float()

    q_normal = torch.zeros(n, kp, dtype=torch.int8, device=device)
    scale = torch.zeros(n, groups, dtype=torch.float32, device=device)
    for g in range(groups):
        a, b = g * group_size, (g + 1) * group_size
        wb = w[:, a:b]  # a view: updated in place
        if clip_ratio is None:
            ratio = _search_clip(wb, importance[a:b], group_size)[:, 0]
        else:
            ratio = torch.full((n,), float(clip_ratio), device=device)
        s = wb.abs().amax(dim=1) * ratio / INT4_MAX  # propagates NaN, like the RTN path
        scale[:, g] = s
        inv = _safe_inverse(s)
        err = torch.zeros(n, group_size, dtype=torch.float32, device=device)
        for j in range(group_size):
            col = wb[:, j]
            q = torch.nan_to_num(torch.round(col * inv), nan=0.0).clamp(INT4_MIN, INT4_MAX)
            q_normal[:, a + j] = q.to(torch.int8)
            e = (col - q * s) / u[a + j, a + j]
            err[:, j] = e
            wb[:, j + 1:] -= e[:, None] * u[a + j, a + j + 1:b][None, :]
        w[:, b:] -= err @ u[a:b, b:]  # the group's errors onto every later column (lazy batch)

    # outliers: INT8 per row, the scale fixed now, after all the INT4 groups' errors landed
    wo = w[:, kp:]
    if n_outliers:
        so = wo.abs().amax(dim=1) / INT8_MAX
        inv = _safe_inverse(so)
        qo = torch.zeros(n, n_outliers, dtype=torch.int8, device=device)
        for j in range(n_outliers):
            col = wo[:, j]
            q = torch.nan_to_num(torch.round(col * inv), nan=0.0).clamp(-INT8_MAX, INT8_MAX)
            qo[:, j] = q.to(torch.int8)
            e = (col - q * so) / u[kp + j, kp + j]
            wo[:, j + 1:] -= e[:, None] * u[kp + j, kp + j + 1:][None, :]
    else:
        qo, so = quantize_int8_rows(wo)
    return {
        "qdata": pack_int4(q_normal, group_size),
        "scale": scale,
        "outlier_qdata": qo,
        "outlier_scale": so,
        "perm": perm,
    }

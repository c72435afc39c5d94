"""Offline weight side of the format: outlier selection and weight quantization with clip search."""

from __future__ import annotations

import torch

from atom_ao.format import (
    INT4_MAX,
    check_layout,
    k_normal_padded,
    pack_int4,
    permute_and_pad,
    quantize_int4_groups,
    quantize_int8_rows,
)

# Candidate weight clip ratios for the search (1.0 = no clipping).
CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0 ... 0.5


def outlier_permutation(channel_score: torch.Tensor, n_outliers: int) -> torch.Tensor:
    """Permutation (new position -> original channel) moving the ``n_outliers`` highest-scoring
    channels to the end. Normal channels keep their original order; outliers are sorted by
    ascending score. Ties break by channel index, so equal scores give equal permutations
    (which is what makes q/k/v, fed the same input, share one permutation)."""
    k = channel_score.numel()
    score = channel_score.double().cpu()
    # stable sort: equal scores keep index order, so the result is deterministic
    order = torch.sort(score, stable=True).indices
    outliers = order[k - n_outliers:] if n_outliers else order[:0]
    is_outlier = torch.zeros(k, dtype=torch.bool)
    is_outlier[outliers] = True
    normal = torch.arange(k)[~is_outlier]
    return torch.cat([normal, outliers]).to(torch.int32).to(channel_score.device)


def data_free_channel_score(weight: torch.Tensor) -> torch.Tensor:
    """Without calibration data, rank input channels by the largest weight magnitude in their
    column: those columns dominate the INT4 group scales, so keeping them in INT8 helps the
    weight side most. (Activation outliers are invisible without data: see the README.)"""
    return weight.float().abs().amax(dim=0)


def _search_clip(
    normal: torch.Tensor, importance: torch.Tensor | None, group_size: int
) -> torch.Tensor:
    """Per-group clip ratio minimising sum_k importance_k * (w_k - dequant(w_k))^2.

    ``importance`` is the mean squared activation per channel (calibration), which makes the
    objective the expected squared output error of the layer, ignoring cross-channel terms.
    """
    rows, k = normal.shape
    groups = k // group_size
    wg = normal.reshape(rows, groups, group_size)
    imp = (
        torch.ones(groups, group_size, device=normal.device)
        if importance is None
        else importance.reshape(groups, group_size).to(normal.device, torch.float32)
    )
    amax = wg.abs().amax(dim=-1)
    best_err = torch.full((rows, groups), float("inf"), device=normal.device)
    best_ratio = torch.ones(rows, groups, device=normal.device)
    for ratio in CLIP_GRID:
        scale = (amax * ratio / INT4_MAX).clamp_min(1e-30)[..., None]
        deq = (wg / scale).round().clamp(-8, 7) * scale
        err = ((wg - deq) ** 2 * imp).sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def quantize_weight(
    weight: torch.Tensor,
    perm: torch.Tensor,
    n_outliers: int,
    group_size: int,
    clip_ratio: float | None,
    importance: torch.Tensor | None = None,
    what: str = "weight",
) -> dict[str, torch.Tensor]:
    """(N, K) float weight -> the tensors of ``AtomQuantTensor``.

    ``clip_ratio=None`` searches a ratio per group (see ``_search_clip``); a float fixes it.
    ``importance`` (K,) is the calibration mean square of each input channel, original order.
    """
    n, k = weight.shape
    check_layout(k, n_outliers, group_size, what)
    perm = perm.to(weight.device)
    normal, outl = permute_and_pad(weight, perm, n_outliers, group_size)
    if clip_ratio is None:
        imp = None
        if importance is not None:
            imp_p = importance.to(weight.device).float().index_select(0, perm)[: k - n_outliers]
            pad = k_normal_padded(k, n_outliers, group_size) - (k - n_outliers)
            imp = torch.nn.functional.pad(imp_p, (0, pad))
        ratio = _search_clip(normal, imp, group_size)
    else:
        ratio = clip_ratio
    q, scale = quantize_int4_groups(normal, group_size, ratio)
    qo, scale_o = quantize_int8_rows(outl)
    return {
        "qdata": pack_int4(q, group_size),
        "scale": scale,
        "outlier_qdata": qo,
        "outlier_scale": scale_o,
        "perm": perm,
    }

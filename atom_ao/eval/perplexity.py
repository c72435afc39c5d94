"""Perplexity with the standard window method."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, seq_len: int = 2048, stride: int | None = None,
               max_windows: int | None = None, device=None, progress: bool = True) -> float:
    """exp(mean NLL) over ``tokens`` (1, T).

    stride None: non-overlapping windows of ``seq_len``, every token after the first of a
    window scored. stride < seq_len: sliding windows moved by ``stride``, only the last
    ``stride`` tokens of each window scored (HF's strided method). NLL summed in float64.
    """
    device = device or next(model.parameters()).device
    ids = tokens.reshape(-1)
    stride = stride or seq_len
    starts = list(range(0, max(ids.numel() - seq_len, 0) + 1, stride))
    if max_windows:
        starts = starts[:max_windows]
    nll, count = 0.0, 0
    for i, s in enumerate(tqdm(starts, desc="perplexity", disable=not progress)):
        window = ids[s:s + seq_len].to(device)[None]
        logits = model(window, use_cache=False).logits.float()
        first = 0 if (stride == seq_len or i == 0) else seq_len - stride - 1  # score the last `stride`
        targets = window[:, first + 1:]
        lp = F.cross_entropy(logits[0, first:-1], targets[0], reduction="sum")
        nll += float(lp.double())
        count += targets.numel()
    return math.exp(nll / count)

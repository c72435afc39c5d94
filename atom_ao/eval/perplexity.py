"""Perplexity of a causal LM on a token stream, by the standard window method."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, seq_len: int = 2048, stride: int | None = None,
               max_windows: int | None = None, device=None, progress: bool = True,
               forward=None) -> float:
    """exp(sum of NLL / number of scored tokens) of ``model`` on ``tokens`` (shape (1, T) or (T,)).

    Windows of ``seq_len`` tokens start at 0, stride, 2*stride, ... while a full window fits
    (the tail after the last full window is not used; a stream shorter than ``seq_len`` is one
    window). Each window is an independent forward pass (``use_cache=False``, no state between
    windows).

    * ``stride=None`` (= ``seq_len``): non-overlapping windows, as in GPTQ / Atom; every token of
      a window except its first is scored (the first has no context in that window).
    * ``stride < seq_len``: sliding windows (Hugging Face's strided method); the first window
      scores all its tokens after the first, each later one only its last ``stride`` tokens, so
      every token is scored once and with at least ``seq_len - stride`` tokens of context.

    ``max_windows`` keeps only the first windows. NLL is summed in float64 over scored tokens.
    ``forward(model, ids) -> logits`` replaces the plain ``model(ids, use_cache=False).logits``
    (e.g. to run the attention through an INT4 KV cache).
    """
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in (0, seq_len={seq_len}], got {stride}")
    if device is None:
        device = next(model.parameters()).device
    ids = tokens.reshape(-1)
    starts = list(range(0, max(ids.numel() - seq_len, 0) + 1, stride))
    if max_windows is not None:
        starts = starts[:max_windows]
    nll, count = 0.0, 0
    for i, s in enumerate(tqdm(starts, desc="perplexity", unit="window", disable=not progress)):
        window = ids[s:s + seq_len].to(device)[None]
        # position predicting the first scored token: 0 in the first window; later, the last
        # `stride` tokens (stride == seq_len: all but the first, which has no context)
        first = 0 if i == 0 else max(window.shape[1] - stride - 1, 0)
        logits = (forward(model, window) if forward else model(window, use_cache=False).logits)[0, first:-1]
        targets = window[0, first + 1:]
        # log-softmax in float32 (logits may be bf16), the sum in float64
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
        nll += token_nll.double().sum().item()
        count += targets.numel()
    if count == 0:
        raise ValueError(f"nothing to score: {ids.numel()} tokens")
    return math.exp(nll / count)

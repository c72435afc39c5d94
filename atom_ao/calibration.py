"""Running calibration text through a prepared model, and the whole prepare -> convert flow."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torchao.quantization import quantize_
from tqdm.auto import tqdm

from atom_ao.config import AtomConfig


@torch.no_grad()
def calibrate(model: torch.nn.Module, batches: Iterable | torch.Tensor, progress: bool = True) -> int:
    """Feed calibration batches through a model prepared with ``atom_config(step="prepare")``.

    ``batches``: a (n, seq_len) LongTensor of token ids (one sequence per forward), or any
    iterable of token-id tensors or of keyword dicts for the model. Returns the tokens seen.
    """
    device = next(model.parameters()).device
    seen = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    for batch in tqdm(batches, total=total, desc="calibrating", disable=not progress):
        if isinstance(batch, dict):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            model(**batch)
            seen += batch["input_ids"].numel() if "input_ids" in batch else 0
        else:
            ids = batch.to(device)
            ids = ids[None] if ids.dim() == 1 else ids
            model(ids)
            seen += ids.numel()
    return seen


def quantize_calibrated(
    model: torch.nn.Module,
    batches: Iterable | torch.Tensor,
    config: AtomConfig | None = None,
    filter_fn: Callable | None = None,
    progress: bool = True,
) -> torch.nn.Module:
    """prepare -> calibrate -> convert in one call (the calibrated Atom flow)."""
    config = config or AtomConfig()
    fields = {k: getattr(config, k) for k in ("n_outliers", "group_size", "act_clip_ratio", "weight_clip_ratio")}
    quantize_(model, AtomConfig(**fields, step="prepare"), filter_fn=filter_fn)
    calibrate(model, batches, progress=progress)
    quantize_(model, AtomConfig(**fields, step="convert"), filter_fn=filter_fn)
    return model

"""``AtomConfig`` / ``atom_config``: the torchao config of the Atom W4A4 workflow."""

from __future__ import annotations

from dataclasses import dataclass

from torchao.core.config import AOBaseConfig

from atom_ao.format import check_layout

STEPS = (None, "prepare", "convert")


@dataclass
class AtomConfig(AOBaseConfig):
    """Atom W4A4 for ``nn.Linear`` layers, applied with ``torchao.quantization.quantize_``.

    Args:
        n_outliers: input channels kept in INT8 (moved to the end of K); 0 disables them.
        group_size: INT4 group size along K for weights and activations.
        act_clip_ratio: clip ratio of the dynamic per-(token, group) INT4 activation scales
            (the paper's 0.9).
        weight_clip_ratio: a fixed clip ratio for the INT4 weight scales, or None (default) to
            search one per (row, group) minimising the layer's expected output error.
        step: None quantizes at once, data-free (outliers chosen from the weights);
            "prepare" inserts observers that collect per-channel sum of squares of the inputs;
            "convert" quantizes the observed layers with outliers chosen from those statistics.
    """

    n_outliers: int = 128
    group_size: int = 128
    act_clip_ratio: float = 0.9
    weight_clip_ratio: float | None = None
    step: str | None = None

    def __post_init__(self):
        if isinstance(self.step, str):
            self.step = self.step.lower()
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {self.step!r}")
        # shape-independent checks (K is checked per layer)
        check_layout(10**9, self.n_outliers, self.group_size, "AtomConfig")
        if not 0.0 < self.act_clip_ratio <= 1.0:
            raise ValueError(f"act_clip_ratio must be in (0, 1], got {self.act_clip_ratio}")
        if self.weight_clip_ratio is not None and not 0.0 < self.weight_clip_ratio <= 1.0:
            raise ValueError(f"weight_clip_ratio must be in (0, 1] or None, got {self.weight_clip_ratio}")


def atom_config(**kwargs) -> AtomConfig:
    """``quantize_(model, atom_config())``: Atom W4A4 with the paper's defaults."""
    return AtomConfig(**kwargs)

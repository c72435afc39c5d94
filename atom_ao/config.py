"""``AtomConfig`` / ``atom_config``: the torchao config of the Atom W4A4 workflow."""

from __future__ import annotations

from dataclasses import dataclass

from torchao.core.config import AOBaseConfig

from atom_ao.format import check_layout

STEPS = (None, "prepare", "convert")
WEIGHT_METHODS = ("rtn", "gptq")
GPTQ_HESSIANS = ("float", "quant")
ACT_MAPPINGS = ("symmetric", "asymmetric")


@dataclass
class AtomConfig(AOBaseConfig):
    """Atom W4A4 for ``nn.Linear`` layers, applied with ``torchao.quantization.quantize_``.

    Args:
        n_outliers: input channels kept in INT8 (moved to the end of K); 0 disables them.
        group_size: INT4 group size along K for weights and activations.
        act_clip_ratio: clip ratio of the dynamic per-(token, group) INT4 activation scales;
            None (default): the paper's 0.9 for symmetric activations, 1.0 for asymmetric ones
            (clipping both ends of a group cost more than it saved: Qwen2.5-0.5B W4A4 GPTQ wiki
            perplexity 40.32 at 0.9 vs 36.13 at 1.0, symmetric 36.84; README).
        act_mapping: "symmetric" (the paper: scale = clip * absmax / 7) or "asymmetric" (a float
            zero point per token and group too, over [clip * min, clip * max]; the GEMM adds one
            small term; ``atom_ao.format``). torchao's ``MappingType`` is accepted as well.
        weight_clip_ratio: a fixed clip ratio for the INT4 weight scales, or None (default) to
            search one per (row, group) minimising the layer's expected output error.
        step: None quantizes at once, data-free (outliers chosen from the weights);
            "prepare" inserts observers that collect per-channel sum of squares of the inputs;
            "convert" quantizes the observed layers with outliers chosen from those statistics.
        weight_method: "rtn" rounds each weight to nearest (with the clip search); "gptq" rounds
            with GPTQ's error compensation (``atom_ao.gptq``): calibrated flow only, the
            observers then also collect the Hessian sum(x x^T) of each linear's input.
        gptq_hessian: "float" builds the Hessian from the float activations, "quant" from the
            activations quantized as the W4A4 GEMM sees them (a second calibration pass).
        gptq_damp: GPTQ damping, a fraction of the mean of diag(H) added to the diagonal. 0.1
            (not GPTQ's usual 0.01): with the few thousand calibration tokens a CPU run affords,
            GPTQ overfits the calibration text and 0.1 generalizes better on held-out text
            (measured on SmolLM2, see tests/test_gptq.py and the README).
        inductor_passes: install ``atom_ao.inductor``'s torch.compile fusion pass when this
            config quantizes a model (also off with the environment variable
            ``ATOM_AO_INDUCTOR=0``).
    """

    n_outliers: int = 128
    group_size: int = 128
    act_clip_ratio: float | None = None
    act_mapping: str = "symmetric"
    weight_clip_ratio: float | None = None
    step: str | None = None
    weight_method: str = "rtn"
    gptq_hessian: str = "float"
    gptq_damp: float = 0.1
    inductor_passes: bool = True

    def __post_init__(self):
        if isinstance(self.step, str):
            self.step = self.step.lower()
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {self.step!r}")
        # shape-independent checks (K is checked per layer)
        check_layout(10**9, self.n_outliers, self.group_size, "AtomConfig")
        name = getattr(self.act_mapping, "name", self.act_mapping)  # torchao MappingType or str
        self.act_mapping = str(name).lower()
        if self.act_mapping not in ACT_MAPPINGS:
            raise ValueError(f"act_mapping must be one of {ACT_MAPPINGS}, got {self.act_mapping!r}")
        if self.act_clip_ratio is None:
            self.act_clip_ratio = 1.0 if self.act_mapping == "asymmetric" else 0.9
        if not 0.0 < self.act_clip_ratio <= 1.0:
            raise ValueError(f"act_clip_ratio must be in (0, 1], got {self.act_clip_ratio}")
        if self.weight_clip_ratio is not None and not 0.0 < self.weight_clip_ratio <= 1.0:
            raise ValueError(f"weight_clip_ratio must be in (0, 1] or None, got {self.weight_clip_ratio}")
        if isinstance(self.weight_method, str):
            self.weight_method = self.weight_method.lower()
        if self.weight_method not in WEIGHT_METHODS:
            raise ValueError(f"weight_method must be one of {WEIGHT_METHODS}, got {self.weight_method!r}")
        if self.gptq_hessian not in GPTQ_HESSIANS:
            raise ValueError(f"gptq_hessian must be one of {GPTQ_HESSIANS}, got {self.gptq_hessian!r}")
        if not 0.0 <= self.gptq_damp < 1.0:
            raise ValueError(f"gptq_damp must be in [0, 1), got {self.gptq_damp}")


def atom_config(**kwargs) -> AtomConfig:
    """``quantize_(model, atom_config())``: Atom W4A4 with the paper's defaults."""
    return AtomConfig(**kwargs)

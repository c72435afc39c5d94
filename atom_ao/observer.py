"""Calibration (the "prepare" step): linears that record per-input-channel activation statistics.

With ``weight_method="gptq"`` they also accumulate the GPTQ Hessian ``H = sum_t x_t x_t^T``:

* ``hessian="float"``: from the float activations, in the same pass;
* ``hessian="quant"``: from the activations as the W4A4 GEMM sees them (quantized with this
  layer's outlier permutation and dequantized), the paper's choice. The permutation is only known
  once the sum of squares is complete, so this needs a second pass over the calibration data:
  ``atom_ao.calibrate`` runs it by itself (``begin_quant_hessian`` between the passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AtomObservedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, in float, also accumulates sum(x^2) per input channel (and, for
    GPTQ, the Hessian sum(x x^T), float32, in_features x in_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("act_sq_sum", torch.zeros(in_features, dtype=torch.float64, device=device))
        self.register_buffer("act_tokens", torch.zeros((), dtype=torch.int64, device=device))
        self.hessian_mode: str | None = None
        # buffers (they move with .to(), for block-by-block calibration on another device), not
        # saved in state_dict
        self.register_buffer("hessian", None, persistent=False)
        self.register_buffer("_quant_perm", None, persistent=False)  # set by begin_quant_hessian
        self._quant_params: tuple | None = None  # (n_outliers, group_size, act_clip_ratio[, asymmetric])

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, hessian: str | None = None,
                   quant_params: tuple | None = None) -> "AtomObservedLinear":
        """``hessian``: None (RTN: no Hessian, no extra memory), "float" or "quant" (GPTQ);
        ``quant_params`` = (n_outliers, group_size, act_clip_ratio[, asymmetric]), needed for "quant"."""
        if hessian not in (None, "float", "quant"):
            raise ValueError(f"hessian must be None, 'float' or 'quant', got {hessian!r}")
        if hessian == "quant" and quant_params is None:
            raise ValueError("hessian='quant' needs quant_params=(n_outliers, group_size, act_clip_ratio)")
        obs = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        obs.weight = linear.weight
        obs.bias = linear.bias
        dev = linear.weight.device
        obs.act_sq_sum = torch.zeros(linear.in_features, dtype=torch.float64, device=dev)
        obs.act_tokens = torch.zeros((), dtype=torch.int64, device=dev)
        obs.hessian_mode = hessian
        obs._quant_params = quant_params
        if hessian is not None:
            obs.hessian = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float32, device=dev)
        return obs

    @property
    def needs_quant_pass(self) -> bool:
        """True when the quantized-input Hessian is wanted and its pass has not started yet."""
        return self.hessian_mode == "quant" and self._quant_perm is None

    def begin_quant_hessian(self) -> None:
        """Fix the outlier permutation from the sum of squares seen so far; later forwards add
        the quantized activations to the Hessian (and leave the sum of squares alone)."""
        from atom_ao.weight import outlier_permutation

        if int(self.act_tokens) == 0:
            raise RuntimeError("begin_quant_hessian: no calibration data reached this layer yet")
        self._quant_perm = outlier_permutation(self.act_sq_sum, self._quant_params[0])

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        if self._quant_perm is not None:  # second pass of hessian="quant"
            from atom_ao.gptq import fake_quantize_activation

            n_out, gs, clip, *asym = self._quant_params
            xq = fake_quantize_activation(x.detach().reshape(-1, self.in_features), self._quant_perm, n_out, gs, clip,
                                          bool(asym and asym[0]))
            self.hessian.addmm_(xq.t(), xq)
            return
        x2 = x.detach().reshape(-1, self.in_features).double()
        self.act_sq_sum += (x2 * x2).sum(dim=0)
        self.act_tokens += x2.shape[0]
        if self.hessian_mode == "float":
            xf = x.detach().reshape(-1, self.in_features).float()
            self.hessian.addmm_(xf.t(), xf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, observed_tokens={int(self.act_tokens)}"

"""Calibration (the "prepare" step): linears that record per-input-channel activation statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AtomObservedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, in float, also accumulates sum(x^2) per input channel."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("act_sq_sum", torch.zeros(in_features, dtype=torch.float64, device=device))
        self.register_buffer("act_tokens", torch.zeros((), dtype=torch.int64, device=device))

    @classmethod
    def from_float(cls, linear: torch.nn.Linear) -> "AtomObservedLinear":
        obs = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        obs.weight = linear.weight
        obs.bias = linear.bias
        obs.act_sq_sum = torch.zeros(linear.in_features, dtype=torch.float64, device=linear.weight.device)
        obs.act_tokens = torch.zeros((), dtype=torch.int64, device=linear.weight.device)
        return obs

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, self.in_features).double()
        self.act_sq_sum += (x2 * x2).sum(dim=0)
        self.act_tokens += x2.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, observed_tokens={int(self.act_tokens)}"

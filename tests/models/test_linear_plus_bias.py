"""The q/k/v bias of VAR and Infinity: fused into our ``Linear``'s matmul, added after a quantizer's replacement
layer (bitsandbytes' ``Linear4bit.forward`` takes the input only; diffusers swaps every ``nn.Linear`` for it)."""

from __future__ import annotations

import torch
from torch import nn

from vpg_pipelines.models.layers import Linear, linear_plus_bias


class _InputOnly(nn.Module):
    """Stands in for a quantizer's layer: ``forward(x)`` only."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_bias_is_fused_in_our_linear_and_added_after_a_replacement_layer():
    torch.manual_seed(0)
    ours = Linear(8, 12, bias=False)
    bias, x = torch.randn(12), torch.randn(3, 5, 8)
    fused = linear_plus_bias(ours, x, bias)
    assert torch.equal(fused, torch.nn.functional.linear(x, ours.weight, bias))  # the same addmm
    replaced = linear_plus_bias(_InputOnly(ours.weight.data), x, bias)
    # addmm vs matmul then add: the same sums rounded in another order (a few float32 ulps)
    torch.testing.assert_close(replaced, fused, atol=1e-6, rtol=0)

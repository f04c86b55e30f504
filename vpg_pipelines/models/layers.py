"""Building blocks shared by the VAR, Infinity and InfinityStar transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache


class Linear(nn.Linear):
    """``nn.Linear`` that casts its input to its own weight dtype when it runs.

    The cast happens inside the layer's ``forward``, after diffusers' hooks have run: under
    ``enable_layerwise_casting`` the weight is then in the *compute* dtype (reading
    ``layer.weight.dtype`` from the parent would give the fp8 *storage* dtype), and a bf16 model keeps
    its float32 residual stream (as the official code does under autocast). A no-op when the dtypes
    already agree.
    """

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``bias``: a bias given at call time to a bias-free layer (one fused matmul + add, e.g. VAR's
        q/k/v bias built from two parameters of the attention)."""
        if bias is None:
            return super().forward(x.to(self.weight.dtype))
        return F.linear(x.to(self.weight.dtype), self.weight, bias.to(self.weight.dtype))


def linear_plus_bias(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``layer(x) + bias`` for a bias-free ``layer``: one fused matmul where ``layer`` is our :class:`Linear`; a
    quantizer's replacement (bitsandbytes' ``Linear4bit`` takes ``x`` only) gets the bias added after it."""
    if type(layer) is Linear:
        return layer(x, bias)
    out = layer(x)
    return out + bias.to(out.dtype)


def step_causal_mask(token_steps: torch.Tensor, cached: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive attention mask for new tokens attending to ``cached`` tokens plus themselves.

    ``token_steps`` is ``(N,)``: the step each new token belongs to. A new token sees every cached
    token and every new token of its own or an earlier step (block-causal over scales). Callers
    pass no mask at all when the new tokens belong to one step (deciding that from host-side step
    metadata, so no device synchronisation is needed).
    """
    allowed = token_steps[None, :] <= token_steps[:, None]  # (N, N)
    mask = torch.zeros(token_steps.shape[0], cached + token_steps.shape[0], dtype=dtype, device=token_steps.device)
    mask[:, cached:].masked_fill_(~allowed, float("-inf"))
    return mask


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layer: int,
    kv_cache: KVCache | None,
    store: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA over (cache + new keys). ``q, k, v``: (R, H, N, hd); returns (R, H, N, hd)."""
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v, store=store)
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)

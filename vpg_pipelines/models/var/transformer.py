"""The VAR transformer (class-conditional next-scale prediction), re-implemented.

State-dict keys match the official ``var_d*.pth`` files, except the three derived buffers those files
also carry (``lvl_1L``, ``attn_bias_for_masking``, ``blocks.*.attn.zero_k_bias``), which we rebuild
instead of storing (see :data:`DERIVED_BUFFERS`).

One ``forward`` serves training (teacher forcing over all scales), cached sampling (one scale per
call) and the VPG corrupted branch (per-row position ids, several scales block-causally).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..adapter import HiddenHook
from ..chunking import ChunkedFeedForward, ForwardChunkingMixin, chunked_over_tokens
from ..kv_cache import KVCache
from ..layers import Linear, cached_attention, linear_plus_bias, step_causal_mask

DERIVED_BUFFERS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")
"""Keys of the official files that hold no learned values (rebuilt from the config)."""


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, computed in float32 (as autocast does) and cast back."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``h * (1 + scale) + shift``, in place on the fresh ``h`` when no gradient is recorded."""
    if torch.is_grad_enabled():
        return h * (scale + 1) + shift
    return h.mul_(scale + 1).add_(shift)


def _gate(out: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``out * gamma``, in place on the fresh ``out`` when no gradient is recorded."""
    return out * gamma if torch.is_grad_enabled() else out.mul_(gamma)


class VARAttention(nn.Module):
    """Self-attention with fused qkv, (q, 0, v) biases and optional per-head L2-normalised q/k."""

    def __init__(self, dim: int, num_heads: int, l2_norm: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.mat_qkv = Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        layer: int,
        kv_cache: KVCache | None,
        attn_mask: torch.Tensor | None,
        store: bool,
    ) -> torch.Tensor:
        rows, n, dim = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = linear_plus_bias(self.mat_qkv, x, bias).view(rows, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (R, H, N, hd)
        if self.l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp().to(q.dtype)
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
            scale = 1.0
        else:
            scale = 0.25 / math.sqrt(self.head_dim)
        out = cached_attention(q, k, v, layer, kv_cache, store=store, attn_mask=attn_mask, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(rows, n, dim))


class VARFeedForward(ChunkedFeedForward, nn.Module):
    """GELU MLP; on ``chunk_size`` tokens at a time under ``enable_forward_chunking``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return chunked_over_tokens(self._mlp, x, self.chunk_size)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VARBlock(nn.Module):
    """AdaLN block: x += g1 * Attn(LN(x)(1+s1)+b1); x += g2 * FFN(LN(x)(1+s2)+b2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, shared_aln: bool, l2_norm: bool, eps: float):
        super().__init__()
        self.eps = eps
        self.attn = VARAttention(dim, num_heads, l2_norm)
        self.ffn = VARFeedForward(dim, round(dim * mlp_ratio))
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, dim))
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 6 * dim))

    def modulation(self, cond: torch.Tensor, memo: dict | None, layer: int) -> torch.Tensor:
        """(C, 1, 6, dim) modulation of the condition rows ``cond`` (memoised for the run)."""
        mod = None if memo is None else memo.get(("ada", layer))
        if mod is None:
            if self.shared_aln:
                mod = self.ada_gss + cond  # cond is the shared (C, 1, 6, dim) modulation
            else:
                mod = self.ada_lin(cond).view(-1, 1, 6, self.ffn.fc2.out_features)
            if memo is not None:
                memo[("ada", layer)] = mod
        return mod

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        layer: int,
        kv_cache: KVCache | None,
        attn_mask: torch.Tensor | None,
        store: bool,
        rows: torch.Tensor | None = None,
        memo: dict | None = None,
    ) -> torch.Tensor:
        """``cond``: the condition rows' embedding (or shared modulation); ``rows``: each row's condition
        (``None``: one condition per row)."""
        mod = self.modulation(cond, memo, layer)
        if rows is not None:
            mod = mod[rows]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)
        h = _modulate(_layer_norm(x, self.eps), scale1, shift1)
        x = x + _gate(self.attn(h, layer, kv_cache, attn_mask, store), gamma1)
        h = _modulate(_layer_norm(x, self.eps), scale2, shift2)
        return x + _gate(self.ffn(h), gamma2)


class VARHeadNorm(nn.Module):
    """AdaLN before the head: LN(x)(1+scale)+shift from the class embedding."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(dim, 2 * dim))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None, memo: dict | None = None
    ) -> torch.Tensor:
        """``cond``: the condition rows' embedding; ``rows``: each row's condition (``None``: one per row)."""
        mod = None if memo is None else memo.get("head")
        if mod is None:
            mod = self.ada_lin(cond).view(-1, 1, 2, x.shape[-1])
            if memo is not None:
                memo["head"] = mod
        if rows is not None:
            mod = mod[rows]
        scale, shift = mod.unbind(2)
        return _modulate(_layer_norm(x, self.eps), scale, shift)


class SharedAdaLin(Linear):
    """Linear to 6C viewed as (R, 1, 6, C): the shared AdaLN modulation of VAR-d36."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(cond.shape[0], 1, 6, -1)


class VARTransformer(ForwardChunkingMixin, ModelMixin, ConfigMixin):
    """Class-conditional next-scale transformer of VAR.

    Args mirror the official ``VAR`` constructor (``vae_local`` replaced by ``vocab_size`` and
    ``vae_channels``); dropout/kernel-selection arguments of the official class are not needed here.
    """

    _no_split_modules = ["VARBlock"]
    _skip_keys = ["kv_cache"]

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 4096,
        vae_channels: int = 32,
        num_classes: int = 1000,
        depth: int = 16,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        shared_aln: bool = False,
        attn_l2_norm: bool = True,
        patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"`embed_dim` ({embed_dim}) must be divisible by `num_heads` ({num_heads})")
        if patch_nums[0] != 1:
            raise ValueError(f"`patch_nums` must start with 1 (a single start token), got {list(patch_nums)}")
        dim = embed_dim
        self.num_sites = sum(p * p for p in patch_nums)
        self.word_embed = Linear(vae_channels, dim)
        self.class_emb = nn.Embedding(num_classes + 1, dim)  # last row: the null class
        self.pos_start = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.num_sites, dim))
        self.lvl_embed = nn.Embedding(len(patch_nums), dim)
        if shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            [VARBlock(dim, num_heads, mlp_ratio, shared_aln, attn_l2_norm, norm_eps) for _ in range(depth)]
        )
        self.head_nm = VARHeadNorm(dim, norm_eps)
        self.head = Linear(dim, vocab_size)
        site_scale = torch.cat([torch.full((p * p,), i, dtype=torch.long) for i, p in enumerate(patch_nums)])
        self.register_buffer("site_scale", site_scale, persistent=False)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def scale_offsets(self) -> list[int]:
        """First position id of every scale (and the total at the end)."""
        offsets = [0]
        for p in self.config.patch_nums:
            offsets.append(offsets[-1] + p * p)
        return offsets

    def forward(
        self,
        class_labels: torch.Tensor,
        content: torch.Tensor | None,
        position_ids: torch.Tensor,
        include_start: bool = False,
        multi_scale: bool = False,
        kv_cache: KVCache | None = None,
        store_kv: bool = True,
        hidden_hook: HiddenHook | None = None,
        last_tokens: int | None = None,
        condition_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (float32) for the given tokens.

        Args:
            class_labels: ``(R,)`` class per row (``num_classes`` = null class); with
                ``condition_index``, the ``(C,)`` classes of the run's condition rows.
            content: ``(R, N, vae_channels)`` next-scale inputs, or ``None``.
            position_ids: ``(R, N + include_start)`` site indices into ``pos_1LC`` (0 = start token).
                Tokens of several scales attend block-causally; donors of corrupted sites keep
                their own scale, so the scale of a token is read off row 0.
            include_start: prepend the start token (class embedding + ``pos_start``).
            multi_scale: the tokens span several scales (then they attend block-causally).
            kv_cache: cache to attend to and extend (``store_kv``); ``None`` attends to the tokens only.
            hidden_hook: called as ``hook(block_index, hidden)`` after every block.
            last_tokens: return only the logits of the last ``n`` tokens.
            condition_index: ``(R,)`` condition row of each row. Given together with a ``kv_cache``, the
                modulations of the condition rows are computed once per cache (its memo) and reused by
                later calls with the same ``class_labels`` object (the sampler passes its run's rows).
        """
        cond = self.class_emb(class_labels)  # condition rows
        memo = kv_cache.memo_for(class_labels) if kv_cache is not None and condition_index is not None else None
        row_cond = cond if condition_index is None else cond[condition_index]
        parts = []
        if include_start:
            parts.append(row_cond[:, None] + self.pos_start)
        if content is not None:
            parts.append(self.word_embed(content))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        token_scale = self.site_scale[position_ids[0]]
        x = x + (self.lvl_embed(token_scale)[None] + self.pos_1LC[0, position_ids])
        cached = kv_cache.length if kv_cache is not None else 0
        mask = step_causal_mask(token_scale, cached, dtype=x.dtype) if multi_scale else None
        mod = cond
        if self.config.shared_aln:
            mod = memo.get("shared") if memo is not None else None
            if mod is None:
                mod = self.shared_ada_lin(cond)
                if memo is not None:
                    memo["shared"] = mod
        for i, block in enumerate(self.blocks):
            x = block(x, mod, i, kv_cache, mask, store_kv, condition_index, memo)
            if hidden_hook is not None:
                x = hidden_hook(i, x)
        if last_tokens is not None:
            x = x[:, -last_tokens:]
        return self.head(self.head_nm(x, cond, condition_index, memo)).float()

    def teacher_forced_logits(self, class_labels: torch.Tensor, teacher_input: torch.Tensor) -> torch.Tensor:
        """Official ``VAR.forward``: logits (B, L, V) from labels and the (B, L-1, Cvae) input."""
        ids = torch.arange(self.num_sites, device=teacher_input.device).expand(teacher_input.shape[0], -1)
        return self.forward(class_labels, teacher_input, ids, include_start=True, multi_scale=True)

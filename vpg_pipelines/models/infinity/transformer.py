"""The Infinity transformer (text-to-image, bitwise next-scale prediction), re-implemented.

State-dict keys match the official checkpoints (``infinity_2b_reg.pth``, the sharded 8B folders):
blocks live at ``block_chunks.{i}.module.{j}.…`` (or ``blocks.{k}.…`` with one chunk). The official
files also carry the all-zero buffers ``*.zero_k_bias`` (the K part of the fused biases), which we
rebuild instead of storing (:data:`DERIVED_KEYS`); the official loader's other tolerances (length of
``cfg_uncond``, dropped mask buffers) live in ``loading/infinity.py``.

One ``forward`` serves teacher forcing (all scales, block-causal), cached sampling (one scale per
call) and VPG's corrupted branch (per-row RoPE position ids, several scales block-causally). Text is
prepared once per call by :meth:`InfinityTransformer.encode_text` (attention pool, cross-attention
memory), which runs through ``forward`` so that every offload hook fires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..adapter import SUBLAYERS, HiddenHook, StreamPlan, TokenPlan
from ..chunking import ChunkedFeedForward, ForwardChunkingMixin, chunked_over_tokens
from ..kv_cache import KVCache
from ..layers import Linear, cached_attention, linear_plus_bias, step_causal_mask
from .schedules import ROPE_GRID, InfinitySchedule, custom_schedule

DERIVED_KEYS = re.compile(r"(^|\.)zero_k_bias$")
"""Keys of the official files that hold no learned values (zero K biases, rebuilt on the fly)."""

MAX_SCALE_MUL = math.log(100.0)
NUM_LEVELS = 15


class LayerNorm(nn.LayerNorm):
    """Affine LayerNorm computed in float32 whatever the parameter dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, computed in float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def _modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``h * (1 + scale) + shift``, in place on the fresh ``h`` when no gradient is recorded (as the official
    ``mul(...).add_(...)``: one full-size temporary fewer per sub-layer)."""
    if torch.is_grad_enabled() or h.dtype != torch.promote_types(h.dtype, scale.dtype):
        return h * (scale + 1) + shift
    return h.mul_(scale + 1).add_(shift)


def _gate(out: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``out * gamma``, in place on the fresh ``out`` when no gradient is recorded (and the product keeps
    ``out``'s dtype: a bf16 sub-layer output times the float32 gate stays float32, as before)."""
    if torch.is_grad_enabled() or out.dtype != torch.promote_types(out.dtype, gamma.dtype):
        return out * gamma
    return out.mul_(gamma)


def ffn_hidden_width(embed_dim: int, mlp_ratio: float) -> int:
    """``round(C * mlp_ratio / 256) * 256`` (Python's half-to-even ``round``), as the official blocks."""
    return round(embed_dim * mlp_ratio / 256) * 256


def pad_text(features: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact rows ``(sum(lens), C)`` -> padded ``(R, max(lens), C)`` and the validity mask ``(R, L)``."""
    longest = int(lens.max())
    mask = torch.arange(longest, device=features.device)[None, :] < lens.to(features.device)[:, None]
    padded = features.new_zeros(lens.shape[0], longest, features.shape[-1])
    padded[mask] = features
    return padded, mask


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``(R, 1, N, head_dim/2)`` of RoPE-2D for position ids ``row * ROPE_GRID + col``.

    Angle ``p < head_dim/4`` is ``row * inv_freq[p]``, the others ``col * inv_freq[p - head_dim/4]``,
    with ``inv_freq[j] = 1 / 10000^(2j / (head_dim/2))`` (the official angle table, computed per token).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    inv_freq = inv_freq.to(position_ids.device)
    rows = torch.div(position_ids, ROPE_GRID, rounding_mode="floor").float()
    cols = (position_ids % ROPE_GRID).float()
    angles = torch.cat([rows[..., None] * inv_freq, cols[..., None] * inv_freq], dim=-1)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2p, 2p+1)`` of ``(R, H, N, hd)`` by angle ``p``."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([cos * a - sin * b, sin * a + cos * b], dim=-1).reshape(x.shape)


def gather_tokens(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Rows' tokens ``x[r, kept[r]]``: ``(R, N, C)``, ``(R, n)`` -> ``(R, n, C)``."""
    return x.gather(1, kept[..., None].expand(-1, -1, x.shape[-1]))


def gather_rope(rope: tuple[torch.Tensor, torch.Tensor], kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoPE angles ``(R, 1, N, hd/2)`` of the kept tokens ``(R, n)``: each keeps its own position's."""
    index = kept[:, None, :, None]
    return tuple(t.gather(2, index.expand(-1, 1, -1, t.shape[-1])) for t in rope)


@dataclass
class InfinityCondition:
    """Text condition rows prepared by :meth:`InfinityTransformer.encode_text`.

    Attributes:
        pooled: ``(Rc, C)`` attention-pooled text (start token and AdaLN condition, ``cond_BD``).
        memory: ``(Rc, Lmax, C)`` cross-attention memory (``text_proj_for_ca``), zero-padded.
        mask: ``(Rc, Lmax)`` bool, True for a prompt's valid tokens.
        modulation: ``(Rc, 1, 6, C)`` float32 shared AdaLN of every row (``shared_ada_lin(pooled)``), a
            per-call constant computed once; ``None``: computed by every forward (or no shared AdaLN).
    """

    pooled: torch.Tensor
    memory: torch.Tensor
    mask: torch.Tensor
    modulation: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.pooled.shape[0])

    def to(self, *args, **kwargs) -> InfinityCondition:
        """A moved copy (offload hooks call ``.to`` on forward arguments)."""
        mask_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
        device_args = [a for a in args if not isinstance(a, torch.dtype)]
        modulation = None if self.modulation is None else self.modulation.to(*args, **kwargs)
        return InfinityCondition(self.pooled.to(*args, **kwargs), self.memory.to(*args, **kwargs),
                                 self.mask.to(*device_args, **mask_kwargs), modulation)


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight`` in float32 (the official ``FastRMSNorm``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class PoolAttention(nn.Module):
    """One learned query per head attending to a prompt's tokens (``text_proj_for_sos.ca``)."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"`embed_dim` {embed_dim} is not divisible by the {num_heads} text-pool heads")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        self.mat_kv = Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = Linear(embed_dim, embed_dim)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``text`` (R, L, kv_dim), ``mask`` (R, L) -> pooled (R, embed_dim)."""
        rows, length, _ = text.shape
        bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        kv = (self.mat_kv(text) + bias).view(rows, length, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        q = self.mat_q.to(kv.dtype).expand(rows, -1, -1)[:, :, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                             scale=1 / math.sqrt(self.head_dim))
        return self.proj(out.reshape(rows, -1))


class TextAttentivePool(nn.Module):
    """Heads of 128 channels of the text width (64 when the model is wider than 4096)."""

    def __init__(self, text_channels: int, embed_dim: int) -> None:
        super().__init__()
        num_heads = text_channels // (64 if embed_dim > 4096 else 128)
        if num_heads < 1:
            raise ValueError(f"`text_channels` {text_channels} is too small for the attention pool")
        self.ca = PoolAttention(embed_dim, text_channels, num_heads)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.ca(text, mask)


class SelfAttention(nn.Module):
    """Fused qkv with (q, 0, v) biases; cosine attention (per-head learned scale) and RoPE-2D."""

    def __init__(self, embed_dim: int, num_heads: int, cos_attn: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.cos_attn = cos_attn
        if cos_attn:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.mat_qkv = Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = Linear(embed_dim, embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layer: int,
        kv_cache: KVCache | None,
        attn_mask: torch.Tensor | None,
        store: bool,
    ) -> torch.Tensor:
        rows, n, dim = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        # the bias inside the matmul (one addmm, as the official F.linear), not a second pass over 3C outputs
        qkv = linear_plus_bias(self.mat_qkv, x, bias).view(rows, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (R, H, N, hd)
        if self.cos_attn:
            scale_mul = self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp()
            q = F.normalize(q.float(), dim=-1).mul(scale_mul)
            k = F.normalize(k.float(), dim=-1)
            scale = 1.0
        else:
            scale = 1.0 / math.sqrt(self.head_dim)
        cos, sin = rope
        q = apply_rope(q.float(), cos, sin).to(v.dtype)
        k = apply_rope(k.float(), cos, sin).to(v.dtype)
        out = cached_attention(q, k, v, layer, kv_cache, store=store, attn_mask=attn_mask, scale=scale)
        if kv_cache is not None and store and kv_cache.budget is not None:
            kv_cache.compress(layer, lambda positions: self.scoring_queries(x[:, positions]))
        return self.proj(out.transpose(1, 2).reshape(rows, n, dim))

    def scoring_queries(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, H, N, hd)`` queries of ``x`` as the projection gives them: no bias, normalisation or RoPE
        (what a KV budget scores the cache with; an extra projection of the few tokens it asks for)."""
        rows, n, dim = x.shape
        q = self.mat_qkv(x)[..., :dim]
        return q.reshape(rows, n, self.num_heads, self.head_dim).transpose(1, 2)


class CrossAttention(nn.Module):
    """Image tokens attend to their own prompt's tokens (exact attention with a padding mask)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.mat_q = Linear(embed_dim, embed_dim)
        self.mat_kv = Linear(embed_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.proj = Linear(embed_dim, embed_dim)

    def text_kv(self, memory: torch.Tensor) -> torch.Tensor:
        """``(Rc, L, 2C)`` keys and values of the condition rows' text (``v_bias`` on the values)."""
        bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        return self.mat_kv(memory) + bias

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, cond_index: torch.Tensor,
        memo: dict | None = None, layer: int = 0,
    ) -> torch.Tensor:
        """``x`` (R, N, C); ``memory`` (Rc, L, C) and ``mask`` (Rc, L) per condition row.

        With ``memo`` (the run's, :meth:`KVCache.memo_for`) the text's keys and values are computed at
        the first call, inside this forward (on this block's device, so offload hooks see it), and
        reused at every later scale under ``("ca_kv", layer)``.
        """
        rows, n, dim = x.shape
        kv = None if memo is None else memo.get(("ca_kv", layer))
        if kv is None or kv.device != x.device:
            kv = self.text_kv(memory)
            if memo is not None:
                memo[("ca_kv", layer)] = kv
        kv = kv[cond_index]
        kv = kv.view(rows, kv.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        q = self.mat_q(x).view(rows, n, self.num_heads, self.head_dim).transpose(1, 2).to(k.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[cond_index][:, None, None, :],
                                             scale=1 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(rows, n, dim))


class FeedForward(ChunkedFeedForward, nn.Module):
    """GELU MLP; on ``chunk_size`` tokens at a time under ``enable_forward_chunking``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return chunked_over_tokens(self._mlp, x, self.chunk_size)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class InfinityBlock(nn.Module):
    """Pre-norm block with shared AdaLN: SA (gated) -> CA (ungated, affine LN) -> FFN (gated)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, shared_aln: bool,
                 cos_attn: bool) -> None:
        super().__init__()
        self.eps = norm_eps
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, embed_dim))
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), Linear(embed_dim, 6 * embed_dim))
        self.sa = SelfAttention(embed_dim, num_heads, cos_attn)
        self.ca = CrossAttention(embed_dim, num_heads)
        self.ffn = FeedForward(embed_dim, ffn_hidden_width(embed_dim, mlp_ratio))
        self.ca_norm = LayerNorm(embed_dim, eps=norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        condition: InfinityCondition,
        cond_index: torch.Tensor,
        layer: int,
        kv_cache: KVCache | None,
        attn_mask: torch.Tensor | None,
        store: bool,
        memo: dict | None = None,
        token_plan: TokenPlan | None = None,
    ) -> torch.Tensor:
        """The three residual sub-layers; with ``token_plan`` each may run on a subset of the tokens
        (see :class:`~vpg_pipelines.models.adapter.TokenPlan`; kept tokens keep their RoPE positions)."""
        if self.shared_aln:
            mod = self.ada_gss.float() + modulation  # modulation: shared (R, 1, 6, C), float32
        else:
            mod = self.ada_lin(modulation).float().view(-1, 1, 6, x.shape[-1])
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)

        def attention(tokens: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
            h = _modulate(_layer_norm(tokens, self.eps), scale1, shift1)
            angles = rope if kept is None else gather_rope(rope, kept)
            return _gate(self.sa(h, angles, layer, kv_cache, attn_mask, store), gamma1)

        def cross(tokens: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
            return self.ca(self.ca_norm(tokens), condition.memory, condition.mask, cond_index, memo, layer).float()

        def ffn(tokens: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
            h = _modulate(_layer_norm(tokens, self.eps), scale2, shift2)
            return _gate(self.ffn(h), gamma2)

        if token_plan is None:
            x = x + attention(x, None)
            x = x + cross(x, None)
            return x + ffn(x, None)
        for name, sublayer in zip(SUBLAYERS, (attention, cross, ffn)):
            kept = token_plan.keep(layer, name, x)
            if kept is None:
                out = sublayer(x, None)
                token_plan.record(layer, name, out)
            else:
                out = token_plan.fill(layer, name, kept, sublayer(gather_tokens(x, kept), kept))
            x = x + out
        return x


class BlockChunk(nn.Module):
    """A group of consecutive blocks (the official ``MultipleLayers``; key level ``module``)."""

    def __init__(self, blocks: list[InfinityBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNBeforeHead(nn.Module):
    """``LN(x) * (1 + scale) + shift`` from the pooled text (scale first)."""

    def __init__(self, embed_dim: int, norm_eps: float) -> None:
        super().__init__()
        self.eps = norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), Linear(embed_dim, 2 * embed_dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).float().view(-1, 1, 2, x.shape[-1]).unbind(2)
        return _layer_norm(x, self.eps) * (scale + 1) + shift


class SharedAdaLin(Linear):
    """Linear to 6C viewed as (R, 1, 6, C)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(cond.shape[0], 1, 6, -1)


def default_cfg_uncond(text_maxlen: int, text_channels: int) -> torch.Tensor:
    """The official initial null-text rows: truncated normal (std 1.2, seed 0) / sqrt(text width)."""
    rows = torch.empty(text_maxlen, text_channels)
    gen = torch.Generator(device="cpu").manual_seed(0)
    nn.init.trunc_normal_(rows, std=1.2, generator=gen)
    return rows / text_channels**0.5


class InfinityTransformer(ForwardChunkingMixin, ModelMixin, ConfigMixin):
    """Text-conditional bitwise next-scale transformer of Infinity.

    Args (official constructor names): ``codebook_dim`` bits per VAE site (the official ``vae_local``
    gives it) and ``apply_spatial_patchify`` (8B: a transformer site is 2x2 VAE sites, so it predicts
    ``4 * codebook_dim`` bits); ``text_channels``/``text_maxlen`` of the T5 features; ``embed_dim``,
    ``depth``, ``num_heads``, ``mlp_ratio``, ``norm_eps``; ``shared_aln``; ``cos_attn``;
    ``num_block_chunks`` (official ``block_chunks``: the key layout ``block_chunks.{i}.module.{j}``,
    ``blocks.{k}`` with one chunk); ``add_lvl_embeding_only_first_block``;
    ``rope2d_normalized_by_hw`` (RoPE position mode, 2 for every released model).
    """

    _no_split_modules = ["InfinityBlock"]
    _skip_keys = ["kv_cache"]

    @register_to_config
    def __init__(
        self,
        codebook_dim: int = 32,
        apply_spatial_patchify: int = 0,
        text_channels: int = 2048,
        text_maxlen: int = 512,
        embed_dim: int = 2048,
        depth: int = 32,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        shared_aln: bool = True,
        cos_attn: bool = True,
        num_block_chunks: int = 8,
        add_lvl_embeding_only_first_block: int = 1,
        rope2d_normalized_by_hw: int = 2,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads or (embed_dim // num_heads) % 4:
            raise ValueError(f"`embed_dim` {embed_dim} / `num_heads` {num_heads} must give a head size divisible by 4")
        if num_block_chunks < 1 or depth % num_block_chunks:
            raise ValueError(f"`depth` {depth} must be a multiple of `num_block_chunks` {num_block_chunks}")
        if rope2d_normalized_by_hw not in (0, 2):
            raise ValueError(f"`rope2d_normalized_by_hw` must be 0 or 2, got {rope2d_normalized_by_hw}")
        dim = embed_dim
        self.bits_per_site = codebook_dim * (4 if apply_spatial_patchify else 1)
        self.cfg_uncond = nn.Parameter(default_cfg_uncond(text_maxlen, text_channels))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, dim))
        self.text_norm = RMSNorm(text_channels, norm_eps)
        self.text_proj_for_sos = TextAttentivePool(text_channels, dim)
        self.text_proj_for_ca = nn.Sequential(Linear(text_channels, dim), nn.GELU(approximate="tanh"),
                                              Linear(dim, dim))
        self.lvl_embed = nn.Embedding(NUM_LEVELS, dim)
        self.word_embed = Linear(self.bits_per_site, dim)
        if shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(dim, 6 * dim))
        blocks = [InfinityBlock(dim, num_heads, mlp_ratio, norm_eps, shared_aln, cos_attn) for _ in range(depth)]
        if num_block_chunks == 1:
            self.blocks = nn.ModuleList(blocks)
        else:
            per = depth // num_block_chunks
            self.block_chunks = nn.ModuleList(
                [BlockChunk(blocks[i * per : (i + 1) * per]) for i in range(num_block_chunks)]
            )
        self.head_nm = AdaLNBeforeHead(dim, norm_eps)
        self.head = Linear(dim, 2 * self.bits_per_site)

    # -- structure ---------------------------------------------------------------------------------
    def iter_blocks(self) -> Iterator[InfinityBlock]:
        """Blocks in execution order (global index = chunk * per_chunk + position in chunk)."""
        if self.config.num_block_chunks == 1:
            yield from self.blocks
        else:
            for chunk in self.block_chunks:
                yield from chunk.module

    # -- text --------------------------------------------------------------------------------------
    def encode_text(
        self,
        text_features: torch.Tensor,
        text_lens: Sequence[int] | torch.Tensor,
        null_rows: bool = False,
    ) -> InfinityCondition:
        """Condition rows from compact T5 features ``(sum(lens), text_channels)``.

        With ``null_rows`` a null row follows the real rows for every prompt: the first ``len_i``
        rows of the learned ``cfg_uncond`` (the null text is as long as the prompt).

        Runs through ``forward`` (``self(text=...)``), so every offload hook fires: accelerate's, and
        diffusers' group offloading, which loads the text layers with the model's top-level group.
        """
        return self(text=(text_features, text_lens, null_rows))

    def _encode_text(
        self, text_features: torch.Tensor, text_lens: Sequence[int] | torch.Tensor, null_rows: bool
    ) -> InfinityCondition:
        lens = torch.as_tensor(text_lens, dtype=torch.long).cpu()
        if lens.dim() != 1 or lens.numel() == 0 or int(lens.min()) < 1:
            raise ValueError(f"`text_lens` must be a non-empty list of positive lengths, got {lens.tolist()}")
        if text_features.dim() != 2 or text_features.shape[0] != int(lens.sum()):
            raise ValueError(
                f"`text_features` must be (sum(text_lens) = {int(lens.sum())}, {self.config.text_channels}), "
                f"got {tuple(text_features.shape)}"
            )
        if text_features.shape[1] != self.config.text_channels:
            raise ValueError(f"`text_features` width {text_features.shape[1]} != text_channels "
                             f"{self.config.text_channels}")
        features = text_features.float()
        if null_rows:
            if int(lens.max()) > self.cfg_uncond.shape[0]:
                raise ValueError(f"prompts of up to {self.cfg_uncond.shape[0]} tokens are supported for the null "
                                 f"condition, got {int(lens.max())}")
            null = torch.cat([self.cfg_uncond[: int(n)] for n in lens]).to(features.device, torch.float32)
            features = torch.cat([features, null])
            lens = torch.cat([lens, lens])
        normed = self.text_norm(features)
        padded, mask = pad_text(normed, lens)
        pooled = self.text_proj_for_sos(padded, mask).float()
        memory, _ = pad_text(self.text_proj_for_ca(normed), lens)
        modulation = self.shared_ada_lin(pooled).float() if self.config.shared_aln else None
        return InfinityCondition(pooled, memory, mask, modulation)

    # -- transformer -------------------------------------------------------------------------------
    def forward(
        self,
        condition: InfinityCondition | None = None,
        content: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        scale_ids: torch.Tensor | None = None,
        cond_index: torch.Tensor | None = None,
        include_start: bool = False,
        token_steps: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        store_kv: bool = True,
        hidden_hook: HiddenHook | None = None,
        last_tokens: int | None = None,
        text: tuple | None = None,
        token_plan: TokenPlan | StreamPlan | None = None,
    ) -> torch.Tensor | InfinityCondition:
        """Bitwise logits ``(R, N or last_tokens, 2 * bits_per_site)`` float32 (pairs bit=0, bit=1).

        Args:
            condition: text rows from :meth:`encode_text`.
            content: ``(R, N', bits_per_site)`` next-scale inputs (accumulated codes), or ``None``.
            position_ids: ``(R, N)`` RoPE position ids per token (``row * 128 + col``), start token included.
            scale_ids: ``(N,)`` scale of every token (level embedding).
            cond_index: ``(R,)`` condition row of every batch row (default: one row per condition row).
            include_start: prepend the start token (pooled text + ``pos_start``).
            token_steps: ``(N,)`` step of every token when several steps share the call (block-causal mask).
            kv_cache: cache to attend to and extend (``store_kv``); ``None`` attends to the tokens only.
            hidden_hook: ``hook(block_index, hidden)`` after every block (CFG at a hidden layer).
            last_tokens: return only the logits of the last ``n`` tokens.
            text: ``(text_features, text_lens, null_rows)``: return :meth:`encode_text`'s condition instead.
            token_plan: an accelerator's token pruning (``TokenPlan``) or reduced stream (``StreamPlan``) of this
                (one-step) call; a ``KVCache`` budget (``kv_cache.budget``) compresses each layer's cache after
                its attention.
        """
        if text is not None:
            return self._encode_text(*text)
        if condition is None or position_ids is None or scale_ids is None:
            raise ValueError("pass `condition`, `position_ids` and `scale_ids` (or `text` to encode a prompt)")
        # the text's cross-attention keys/values depend on the condition rows only: once per run
        memo = kv_cache.memo_for(condition) if kv_cache is not None and cond_index is not None else None
        if cond_index is None:
            cond_index = torch.arange(condition.rows, device=position_ids.device)
        cond_index = cond_index.to(condition.pooled.device)
        cond = condition.pooled[cond_index]
        parts = []
        if include_start:
            parts.append(cond[:, None] + self.pos_start.float())
        if content is not None:
            parts.append(self.word_embed(content).float())
        if not parts:
            raise ValueError("nothing to run: pass `content` or `include_start=True`")
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if position_ids.shape != x.shape[:2] or scale_ids.shape != (x.shape[1],):
            raise ValueError(f"`position_ids` {tuple(position_ids.shape)} / `scale_ids` {tuple(scale_ids.shape)} "
                             f"do not match the {tuple(x.shape[:2])} tokens")
        level = self.lvl_embed(scale_ids.to(x.device)).float()
        if not self.config.shared_aln:
            modulation = cond
        elif condition.modulation is not None:  # computed once per call by encode_text
            modulation = condition.modulation.to(cond.device)[cond_index]
        else:
            modulation = self.shared_ada_lin(cond).float()
        rope = rope_cos_sin(position_ids.to(x.device), self.config.embed_dim // self.config.num_heads)
        mask = None
        if token_steps is not None:
            cached = kv_cache.length if kv_cache is not None else 0
            mask = step_causal_mask(token_steps.to(x.device), cached, dtype=torch.float32)
        sub = condition if condition.pooled.device == x.device else condition.to(x.device)
        only_first = bool(self.config.add_lvl_embeding_only_first_block)
        stream = token_plan if isinstance(token_plan, StreamPlan) else None
        sub_plan = token_plan if isinstance(token_plan, TokenPlan) else None
        full_rope, head_dim = rope, self.config.embed_dim // self.config.num_heads
        for i, block in enumerate(self.iter_blocks()):
            if i == 0 or not only_first:
                x = x + level[: x.shape[1]]  # one step per stream plan: a reduced stream has the same level
            if stream is not None and (entered := stream.enter(i, x, position_ids)) is not None:
                x, reduced = entered
                rope = rope_cos_sin(reduced.to(x.device), head_dim)
            x = block(x, modulation, rope, sub, cond_index, i, kv_cache, mask, store_kv, memo, sub_plan)
            if hidden_hook is not None:
                x = hidden_hook(i, x)
            if stream is not None and (left := stream.leave(i, x)) is not None:
                x, rope = left, full_rope
        if last_tokens is not None:
            x = x[:, -last_tokens:]
        return self.head(self.head_nm(x, cond)).float()

    def teacher_forced_logits(
        self,
        text_features: torch.Tensor,
        text_lens: Sequence[int] | torch.Tensor,
        inputs: torch.Tensor,
        schedule: InfinitySchedule | Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """Official ``Infinity.forward`` (no condition dropout): logits ``(B, L, 2 * bits_per_site)``.

        ``inputs`` are the ``(B, L - 1, bits_per_site)`` next-scale inputs of scales 1 .. K-1.
        """
        if not isinstance(schedule, InfinitySchedule):
            schedule = custom_schedule(schedule, rope_mode=self.config.rope2d_normalized_by_hw)
        condition = self.encode_text(text_features, text_lens)
        scale_ids = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(schedule.num_sites)])
        if inputs.shape[1] != scale_ids.numel() - 1:
            raise ValueError(f"`inputs` hold {inputs.shape[1]} tokens; the schedule needs {scale_ids.numel() - 1}")
        positions = schedule.all_position_ids().to(inputs.device).expand(inputs.shape[0], -1)
        return self.forward(condition, inputs, positions, scale_ids.to(inputs.device), include_start=True,
                            token_steps=scale_ids.to(inputs.device))

"""The InfinityStar transformer (official ``Infinity`` with ``arch='qwen'``), re-implemented.

A decoder-only model: the text (T5 features through one Linear, ``simple_text_proj``) is a prefix of
tokens in the same sequence, forwarded once into the KV cache; every visual step then attends to
the cache. Blocks are pre-norm (RMS) with grouped-query attention (per-head RMS-normalised q/k,
``repeat_kv``) and a SwiGLU MLP. Positions are a 4-axis RoPE concatenated per head: scale index,
frame, row, column. Each token carries its own four coordinates (``position_ids`` ``(R, N, 4)``),
so a corrupted site can take its donor's position.

State-dict keys equal the official checkpoints (``block_chunks.{i}.module.{j}.*``).

``enable_forward_chunking(chunk_size)`` (:mod:`..chunking`) runs the per-token parts of every block on
``chunk_size`` tokens at a time: the norms, the query projections and their attention, the output
projection and the SwiGLU MLP, and the final norm and head. Keys and values are projected chunk by
chunk into one tensor (every query attends to all of them); the queries of the heads that share a
key/value head attend as one longer query sequence instead of repeating the keys and values per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..adapter import HiddenHook, StreamPlan
from ..chunking import ChunkedFeedForward, ForwardChunkingMixin, chunked_over_tokens, chunks_needed, token_spans
from ..kv_cache import KVCache
from ..layers import Linear

HEADS = ("semantic", "detail", "none")
ROPE_AXES = 4


class FastRMSNorm(nn.Module):
    """RMS norm computed in float32 and cast back (official ``FastRMSNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(x32.dtype)
        return out.to(x.dtype)


def rope_angles(position_ids: torch.Tensor, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``(R, 1, N, head_dim/2)`` of the 4-axis RoPE for integer coordinates ``(R, N, 4)``.

    Each axis gets ``head_dim / 8`` frequencies ``base ** (-i / n)``; the angle of one axis is
    ``coordinate * frequency`` in float32 (the official precomputed tables hold the same products).
    """
    n = head_dim // 2 // ROPE_AXES
    if n * 2 * ROPE_AXES != head_dim:
        raise ValueError(f"head_dim {head_dim} must be a multiple of {2 * ROPE_AXES}")
    device = position_ids.device
    inv_freq = 1.0 / (base ** (torch.arange(n, device=device).float() / n))
    coords = position_ids.float()
    angles = (coords[..., :, None] * inv_freq).flatten(-2)  # (R, N, 4n): [scale | frame | row | col]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` of ``x`` ``(R, H, N, hd)`` by the angles (float32)."""
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).to(x.dtype)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(R, Hkv, L, hd) -> (R, Hkv * groups, L, hd)``, each KV head repeated for its query group."""
    if groups == 1:
        return x
    r, h, length, d = x.shape
    return x[:, :, None].expand(r, h, groups, length, d).reshape(r, h * groups, length, d)


class StarAttention(nn.Module):
    """Grouped-query self-attention with q/k RMS norms and 4-axis RoPE, attending to the KV cache."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.q_proj = Linear(dim, num_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(dim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(dim, num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(num_heads * self.head_dim, dim, bias=bias)
        self.q_norm = FastRMSNorm(self.head_dim)
        self.k_norm = FastRMSNorm(self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        layer: int,
        kv_cache: KVCache | None,
        store: bool,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        rows, n, _ = x.shape
        hd = self.head_dim
        q = self.q_norm(self.q_proj(x).view(rows, n, self.num_heads, hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(rows, n, self.num_kv_heads, hd)).transpose(1, 2)
        v = self.v_proj(x).view(rows, n, self.num_kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.append(layer, k, v, store=store)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups).to(q.dtype), repeat_kv(v, groups).to(q.dtype)
        mask = attn_mask.to(q.dtype) if attn_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(rows, n, self.num_heads * hd))

    # -- chunked over tokens (see the module docstring) ------------------------------------------------
    def forward_in_chunks(
        self,
        x: torch.Tensor,
        norm: nn.Module,
        rope: tuple[torch.Tensor, torch.Tensor],
        layer: int,
        kv_cache: KVCache | None,
        store: bool,
        attn_mask: torch.Tensor | None,
        chunk_size: int,
    ) -> torch.Tensor:
        """``x + forward(norm(x), ...)`` with every per-token part on ``chunk_size`` tokens at a time (the norm
        is recomputed per chunk for the queries rather than kept for all tokens)."""
        rows, n, _ = x.shape
        hd, spans = self.head_dim, token_spans(n, chunk_size)
        cos, sin = rope
        k = v = None
        for span in spans:
            h = norm(x[:, span])
            ks = self.k_norm(self.k_proj(h).view(rows, -1, self.num_kv_heads, hd)).transpose(1, 2)
            ks = apply_rope(ks, cos[:, :, span], sin[:, :, span])
            vs = self.v_proj(h).view(rows, -1, self.num_kv_heads, hd).transpose(1, 2)
            if k is None:
                k = ks.new_empty((rows, self.num_kv_heads, n, hd))
                v = vs.new_empty((rows, self.num_kv_heads, n, hd))
            k[:, :, span], v[:, :, span] = ks, vs
            del h, ks, vs
        if kv_cache is not None:
            k, v = kv_cache.append(layer, k, v, store=store)
        out = torch.empty_like(x)
        for span in spans:
            part = x[:, span]
            h = norm(part)
            q = self.q_norm(self.q_proj(h).view(rows, -1, self.num_heads, hd)).transpose(1, 2)
            del h
            q = apply_rope(q, cos[:, :, span], sin[:, :, span])
            attended = self._grouped_attention(q, k.to(q.dtype), v.to(q.dtype), _mask_rows(attn_mask, span, n))
            out[:, span] = part + self.o_proj(attended)
        return out

    def _grouped_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor:
        """SDPA of ``q`` ``(R, H, c, hd)`` over ``k, v`` ``(R, Hkv, L, hd)`` without repeating them per head: the
        ``H / Hkv`` query heads of one key/value head are stacked along the query axis (every query row
        attends on its own, so this is the same attention); returns ``(R, c, H * hd)`` for ``o_proj``."""
        rows, heads, c, hd = q.shape
        groups = heads // self.num_kv_heads
        stacked = q.reshape(rows, self.num_kv_heads, groups * c, hd)
        if mask is not None:
            mask = mask.to(q.dtype)
            if mask.dim() >= 3 and mask.shape[-3] != 1:
                raise ValueError("a per-head attention mask cannot be chunked; disable forward chunking")
            if mask.shape[-2] != 1:
                mask = mask.repeat(*([1] * (mask.dim() - 2)), groups, 1)
        out = F.scaled_dot_product_attention(stacked, k, v, attn_mask=mask)  # (R, Hkv, groups * c, hd)
        return out.unflatten(2, (groups, c)).permute(0, 3, 1, 2, 4).reshape(rows, c, heads * hd)


def _mask_rows(mask: torch.Tensor | None, span: slice, tokens: int) -> torch.Tensor | None:
    """The rows of an additive mask ``(..., N or 1, L)`` that belong to the query tokens ``span``."""
    if mask is None or mask.shape[-2] != tokens:
        return mask
    return mask[..., span, :]


class SwiGLU(nn.Module):
    """Qwen3 MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=False)
        self.up_proj = Linear(dim, hidden, bias=False)
        self.down_proj = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class StarBlock(ChunkedFeedForward, nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (per-token parts on ``chunk_size`` tokens at a time when
    forward chunking is on)."""

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, mlp_ratio: float, bias: bool) -> None:
        super().__init__()
        self.attn = StarAttention(dim, num_heads, num_kv_heads, bias)
        self.mlp = SwiGLU(dim, round(dim * mlp_ratio / 256) * 256)
        self.input_layernorm = FastRMSNorm(dim)
        self.post_attention_layernorm = FastRMSNorm(dim)

    def forward(self, x, rope, layer, kv_cache, store, attn_mask) -> torch.Tensor:
        if chunks_needed(x.shape[1], self.chunk_size):
            x = self.attn.forward_in_chunks(x, self.input_layernorm, rope, layer, kv_cache, store, attn_mask,
                                            self.chunk_size)
            return chunked_over_tokens(self._mlp, x, self.chunk_size, residual=True)
        x = x + self.attn(self.input_layernorm(x), rope, layer, kv_cache, store, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(x))


class BlockChunk(nn.Module):
    """A group of consecutive blocks (the official ``MultipleLayers``: keys ``block_chunks.{i}.module.{j}``)."""

    def __init__(self, blocks: list[StarBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class InfinityStarTransformer(ForwardChunkingMixin, ModelMixin, ConfigMixin):
    """InfinityStar's decoder-only next-scale transformer.

    Args:
        vae_channels: channels of the summed codes (the visual input).
        text_channels: channels of the text features (T5).
        text_maxlen: the model's text length; visual tokens sit at ``text_maxlen + step`` on the
            RoPE scale axis (the text uses ``0 .. L-1``).
        embed_dim, depth, num_block_chunks, num_heads, num_key_value_heads, mlp_ratio: the architecture
            (the released 8B: 4096, 36, 6, 32, 8, 4).
        semantic_bits / detail_bits: bits per site of the two heads (each bit has
            ``num_of_label_value`` logits).
        null_text_len: rows of the learned null text ``cfg_uncond``.
        qkvo_bias: biases on the attention projections.
        rope_base: RoPE frequency base.
    """

    _no_split_modules = ["StarBlock"]
    _skip_keys = ["kv_cache"]
    _keep_in_fp32_modules = ["head", "semantic_head2"]

    @register_to_config
    def __init__(
        self,
        vae_channels: int = 64,
        text_channels: int = 2048,
        text_maxlen: int = 512,
        embed_dim: int = 4096,
        depth: int = 36,
        num_block_chunks: int = 6,
        num_heads: int = 32,
        num_key_value_heads: int = 8,
        mlp_ratio: float = 4.0,
        semantic_bits: int = 16,
        detail_bits: int = 64,
        num_of_label_value: int = 2,
        two_stage: bool = True,
        null_text_len: int = 512,
        qkvo_bias: bool = False,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads or num_heads % num_key_value_heads:
            raise ValueError(
                f"`embed_dim` ({embed_dim}) must be divisible by `num_heads` ({num_heads}), and `num_heads` "
                f"by `num_key_value_heads` ({num_key_value_heads})"
            )
        if num_block_chunks < 1 or depth % num_block_chunks:
            raise ValueError(f"`depth` ({depth}) must be divisible by `num_block_chunks` ({num_block_chunks})")
        dim = embed_dim
        self.cfg_uncond = nn.Parameter(torch.zeros(null_text_len, text_channels))
        self.text_proj = Linear(text_channels, dim)
        self.sos_token = nn.Parameter(torch.zeros(1, 1, dim))  # unused at inference (the start input is a zero code)
        self.word_embed = Linear(vae_channels, dim)
        self.norm_hidden_sates = FastRMSNorm(dim)  # (sic) the official name
        blocks = [StarBlock(dim, num_heads, num_key_value_heads, mlp_ratio, qkvo_bias) for _ in range(depth)]
        if num_block_chunks == 1:
            self.blocks = nn.ModuleList(blocks)
        else:
            per = depth // num_block_chunks
            chunks = [BlockChunk(blocks[i * per : (i + 1) * per]) for i in range(num_block_chunks)]
            self.block_chunks = nn.ModuleList(chunks)
        self.head = Linear(dim, detail_bits * num_of_label_value)
        if two_stage:
            self.semantic_head2 = Linear(dim, semantic_bits * num_of_label_value)

    @property
    def head_dim(self) -> int:
        return self.config.embed_dim // self.config.num_heads

    def iter_blocks(self):
        if self.config.num_block_chunks == 1:
            yield from self.blocks
        else:
            for chunk in self.block_chunks:
                yield from chunk.module

    def text_tokens(
        self, text_features: torch.Tensor, text_lengths: torch.Tensor, null_text: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected, zero-padded text prefix ``(R, L, C)`` and its positions ``(R, L, 4)``.

        Rows flagged in ``null_text`` use the learned ``cfg_uncond`` rows instead of their features
        (the official negative when the negative prompt is empty). Padding is zero after the
        projection, as in the official prefix.
        """
        rows, length, _ = text_features.shape
        if length > self.config.null_text_len and null_text is not None and bool(null_text.any()):
            raise ValueError(f"text of {length} tokens is longer than the null text ({self.config.null_text_len})")
        feats = text_features.to(self.cfg_uncond.dtype)
        if null_text is not None:
            null = self.cfg_uncond[:length].to(feats)[None].expand(rows, -1, -1)
            feats = torch.where(null_text.to(feats.device)[:, None, None], null, feats)
        tokens = self.text_proj(feats)
        arange = torch.arange(length, device=tokens.device)
        valid = arange[None, :] < text_lengths.to(tokens.device)[:, None]
        tokens = tokens * valid[..., None].to(tokens.dtype)
        positions = torch.zeros(rows, length, ROPE_AXES, dtype=torch.long, device=tokens.device)
        positions[..., 0] = arange
        return tokens, positions

    def forward(
        self,
        inputs: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        text_lengths: torch.Tensor | None = None,
        null_text: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        store_kv: bool = True,
        attn_mask: torch.Tensor | None = None,
        head: str = "detail",
        hidden_hook: HiddenHook | None = None,
        last_tokens: int | None = None,
        stream_plan: StreamPlan | None = None,
    ) -> torch.Tensor:
        """Logits (float32) of visual tokens, or the hidden states of the text prefix.

        Args:
            inputs: ``(R, N, vae_channels)`` summed codes at the step's grid (visual tokens).
            position_ids: ``(R, N, 4)`` RoPE coordinates (scale axis, frame, row, column) of ``inputs``.
            text_features / text_lengths / null_text: instead of ``inputs``, the text prefix ``(R, L,
                text_channels)`` with its true lengths ``(R,)`` and the rows that take the null text.
            kv_cache: cache to attend to (its ``visible`` ranges apply) and extend (``store_kv``).
            attn_mask: additive ``(N, visible + N)`` mask (several steps in one call).
            head: ``"semantic"`` (``semantic_head2``), ``"detail"`` (``head``) or ``"none"`` (hidden states).
            hidden_hook: ``hook(block_index, hidden)`` after every block.
            last_tokens: return only the last ``n`` tokens.
            stream_plan: runs of blocks on a reduced stream (one step's call; see ``StreamPlan``).
        """
        if head not in HEADS:
            raise ValueError(f"`head` must be one of {HEADS}, got {head!r}")
        if text_features is not None:
            if text_lengths is None:
                raise ValueError("`text_lengths` is required with `text_features`")
            x, position_ids = self.text_tokens(text_features, text_lengths, null_text)
        else:
            if inputs is None or position_ids is None:
                raise ValueError("pass either `text_features` or `inputs` with `position_ids`")
            x = self.word_embed(inputs)
        if position_ids.shape != (*x.shape[:2], ROPE_AXES):
            raise ValueError(f"`position_ids` must be {(*x.shape[:2], ROPE_AXES)}, got {tuple(position_ids.shape)}")
        rope = rope_angles(position_ids, self.head_dim, self.config.rope_base)
        full_rope, full_mask, mask = rope, attn_mask, attn_mask
        for i, block in enumerate(self.iter_blocks()):
            if stream_plan is not None and (entered := stream_plan.enter(i, x, position_ids)) is not None:
                x, reduced = entered
                rope = rope_angles(reduced, self.head_dim, self.config.rope_base)
                if mask is not None:  # one step: the new tokens' columns come last and hide nothing
                    mask = mask[..., : mask.shape[-1] - position_ids.shape[1] + reduced.shape[1]]
            x = block(x, rope, i, kv_cache, store_kv, mask)
            if hidden_hook is not None:
                x = hidden_hook(i, x)
            if stream_plan is not None and (left := stream_plan.leave(i, x)) is not None:
                x, rope, mask = left, full_rope, full_mask
        if last_tokens is not None:
            x = x[:, -last_tokens:]
        if head == "none":
            return x
        if head == "semantic" and not self.config.two_stage:
            raise ValueError("this model has no semantic head (`two_stage=False`)")
        proj = self.semantic_head2 if head == "semantic" else self.head
        return chunked_over_tokens(lambda h: proj(self.norm_hidden_sates(h)).float(), x, self.forward_chunk_size)

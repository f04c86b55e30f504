"""VAR's multi-scale residual VQVAE ("VQ-f16" encoder/decoder around a residual quantizer).

Module and parameter names follow the official checkpoint ``vae_ch160v4096z32.pth`` so it loads
strictly. The quantizer maps a latent ``f`` of size ``pn_K x pn_K`` to one index map per scale
(sizes ``pn_1 < ... < pn_K``); each scale encodes what the coarser scales left unexplained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

# --------------------------------------------------------------------------------------------------
# Encoder / decoder building blocks
# --------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _silu(x: torch.Tensor) -> torch.Tensor:
    # In place (on a fresh GroupNorm output) whenever no gradient is being recorded: the decoder is
    # memory-bound on CPU and this saves ~10 % of its time; training keeps the out-of-place version.
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1 conv when channels change) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_silu(self.norm1(x)))
        h = self.conv2(self.dropout(_silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width)
        # (B, 1 head, HW, C) each; SDPA's default scale 1/sqrt(C) is the official one
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in qkv.unbind(1))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a 3x3 stride-2 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block.{i}``, ``attn.{i}`` and an optional resampler (key names)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample_name: str | None,
                 resample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample_name is not None:
            self.add_module(resample_name, resample)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Image (B,3,H,W) -> latent (B,z_channels,H/2^(L-1),W/2^(L-1)); attention at the lowest level."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)
        last = len(ch_mult) - 1
        levels = []
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if level == last:
                    attns.append(AttnBlock(block_in))
            if level != last:
                levels.append(_Level(blocks, attns, "downsample", Downsample(block_in)))
            else:
                levels.append(_Level(blocks, attns, None, None))
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(block_in, dropout)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image. Levels are stored by resolution (``up.0`` is the finest) and run coarse to fine."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, out_channels: int = 3) -> None:
        super().__init__()
        last = len(ch_mult) - 1
        block_in = ch * ch_mult[last]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, padding=1)
        self.mid = _Middle(block_in, dropout)
        levels: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if level == last:
                    attns.append(AttnBlock(block_in))
            if level != 0:
                levels.append(_Level(blocks, attns, "upsample", Upsample(block_in)))
            else:
                levels.append(_Level(blocks, attns, None, None))
        self.up = nn.ModuleList(levels[::-1])
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------------------
# Residual quantizer
# --------------------------------------------------------------------------------------------------


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h): the per-scale refinement of an upsampled code map."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class PhiBank(nn.Module):
    """The phi layers and the rule choosing one for scale ``k`` of ``K``.

    ``share`` = 0: one phi per scale (keys ``quant_resi.{i}``); 1: a single phi (``quant_resi.qresi``);
    n >= 2: n phis (``quant_resi.qresi_ls.{i}``). Scale k uses the phi whose tick is nearest to k/(K-1).
    """

    def __init__(self, channels: int, ratio: float, share: int, num_scales: int) -> None:
        super().__init__()

        def make() -> nn.Module:
            return Phi(channels, ratio) if abs(ratio) > 1e-6 else nn.Identity()

        if share == 1:
            self.qresi = make()
            self._phis: tuple[str, ...] = ("qresi",)
        elif share == 0:
            for i in range(num_scales):
                self.add_module(str(i), make())
            self._phis = tuple(str(i) for i in range(num_scales))
        else:
            self.qresi_ls = nn.ModuleList(make() for _ in range(share))
            self._phis = tuple(f"qresi_ls.{i}" for i in range(share))
        count = len(self._phis)
        margin = 1 / 3 / count if count == 4 else 1 / 2 / count
        # numpy's linspace so that exact ties (e.g. k/(K-1) = 0.5) break exactly as in the official code
        self._ticks = np.linspace(margin, 1 - margin, count)

    def select(self, scale_index: int, num_scales: int) -> nn.Module:
        """The phi module for scale ``scale_index`` (0-based) of ``num_scales``."""
        if len(self._phis) == 1:
            return self.get_submodule(self._phis[0])
        at = scale_index / (num_scales - 1) if num_scales > 1 else 1.0
        return self.get_submodule(self._phis[int(np.argmin(np.abs(self._ticks - at)))])

    def forward(self, h: torch.Tensor, scale_index: int, num_scales: int) -> torch.Tensor:
        return self.select(scale_index, num_scales)(h)


class MultiScaleQuantizer(nn.Module):
    """Holds the codebook (``embedding``), the phi layers and the official EMA hit-count buffer."""

    def __init__(self, vocab_size: int, channels: int, quant_resi: float, share_quant_resi: int,
                 num_scales: int, default_qresi_counts: int = 0) -> None:
        super().__init__()
        self.quant_resi = PhiBank(channels, quant_resi, share_quant_resi,
                                  default_qresi_counts or num_scales)
        # training statistic only; kept so official state dicts load strictly
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(num_scales, vocab_size))
        self.embedding = nn.Embedding(vocab_size, channels)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def _as_int_tuple(values: Sequence[int], name: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {values!r}")
    return out


class VARVQVAE(ModelMixin, ConfigMixin):
    """VAR's multi-scale VQVAE: encoder, residual multi-scale quantizer, decoder.

    Constructor arguments carry the official names; ``ch_mult`` and ``num_res_blocks`` are fixed
    in the official class (``(1, 1, 2, 2, 4)`` and 2) and exposed here with those defaults.
    Images are in [-1, 1]. ``patch_nums`` (side of each scale's square token map, coarse to fine,
    the last one equal to the latent side) defaults to ``v_patch_nums`` and may be overridden per call.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 4096,
        z_channels: int = 32,
        ch: int = 160,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        beta: float = 0.25,
        using_znorm: bool = False,
        quant_conv_ks: int = 3,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        default_qresi_counts: int = 0,
        v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        test_mode: bool = True,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or z_channels < 1:
            raise ValueError(f"vocab_size and z_channels must be >= 1, got {vocab_size}, {z_channels}")
        ch_mult = _as_int_tuple(ch_mult, "ch_mult")
        self.v_patch_nums = _as_int_tuple(v_patch_nums, "v_patch_nums")
        self.using_znorm = bool(using_znorm)
        self.downsample = 2 ** (len(ch_mult) - 1)

        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels, dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels, dropout)
        self.quantize = MultiScaleQuantizer(vocab_size, z_channels, quant_resi, share_quant_resi,
                                            len(self.v_patch_nums), default_qresi_counts)
        pad = quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, padding=pad)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, padding=pad)
        if test_mode:
            self.eval()
            self.requires_grad_(False)

    # ---------------------------------------------------------------- basics

    @property
    def Cvae(self) -> int:  # noqa: N802 (the official name)
        return self.config.z_channels

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _patch_nums(self, patch_nums: Sequence[int] | None) -> tuple[int, ...]:
        if patch_nums is None:
            return self.v_patch_nums
        return _as_int_tuple(patch_nums, "patch_nums")

    def _codebook(self, like: torch.Tensor) -> torch.Tensor:
        """(V, Cvae) codebook, read through the embedding's forward (offload hooks fire)."""
        return self.quantize.embedding(torch.arange(self.vocab_size, device=like.device))

    def forward(self, indices: torch.LongTensor) -> torch.Tensor:
        """Codebook lookup: indices (...) -> vectors (..., Cvae)."""
        return self.quantize.embedding(indices)

    @apply_forward_hook
    def soft_lookup(self, probs: torch.Tensor) -> torch.Tensor:
        """Mixture of codebook vectors: probs (..., V) @ codebook -> (..., Cvae)."""
        if probs.shape[-1] != self.vocab_size:
            raise ValueError(
                f"probs must have last dimension vocab_size={self.vocab_size}, got {probs.shape[-1]}"
            )
        codebook = self._codebook(probs)
        return probs.to(codebook.dtype) @ codebook

    # ---------------------------------------------------------------- encoding

    @apply_forward_hook
    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(images))``: (B,3,H,W) in [-1,1] -> (B,Cvae,H/16,W/16)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.quant_conv(self.encoder(images))

    def _nearest_code(self, z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of z (N, C)."""
        if self.using_znorm:
            return torch.argmax(F.normalize(z, dim=-1) @ F.normalize(codebook.T, dim=0), dim=1)
        dist = z.square().sum(dim=1, keepdim=True) + codebook.square().sum(dim=1)
        dist = torch.addmm(dist, z, codebook.T, beta=1, alpha=-2)
        return torch.argmin(dist, dim=1)

    @apply_forward_hook
    def encode_to_indices(self, images: torch.Tensor, patch_nums: Sequence[int] | None = None
                          ) -> list[torch.LongTensor]:
        """Residual multi-scale quantization: one (B, pn^2) index tensor per scale (``img_to_idxBl``)."""
        patch_nums = self._patch_nums(patch_nums)
        f = self.encode_features(images)
        batch, channels, height, width = f.shape
        if patch_nums[-1] != height or patch_nums[-1] != width:
            raise ValueError(
                f"patch_nums[-1]={patch_nums[-1]} must equal the latent size {height}x{width} "
                f"(image size / {self.downsample})"
            )
        codebook = self._codebook(f)
        num_scales = len(patch_nums)
        f_rest = f
        indices: list[torch.LongTensor] = []
        for k, pn in enumerate(patch_nums):
            last = k == num_scales - 1
            z = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self._nearest_code(z.permute(0, 2, 3, 1).reshape(-1, channels), codebook)
            h = self.quantize.embedding(idx.view(batch, pn, pn)).permute(0, 3, 1, 2)
            if not last:
                h = F.interpolate(h, size=(height, width), mode="bicubic")
            h = self.quantize.quant_resi(h.contiguous(), k, num_scales)
            f_rest = f_rest - h
            indices.append(idx.reshape(batch, pn * pn))
        return indices

    # ---------------------------------------------------------------- decoding

    @apply_forward_hook
    def decode_latent(self, f_hat: torch.Tensor) -> torch.Tensor:
        """``decoder(post_quant_conv(f_hat))`` clamped to [-1, 1] (``fhat_to_img``).

        On the CPU the activations run channels-last (NHWC): oneDNN's convolutions take that layout
        natively, which decodes a VAR-256 image ~12 % faster than NCHW (``docs/benchmarks.md`` §6); the
        result equals the NCHW decode up to float rounding and is returned in the usual contiguous layout.
        Other devices keep the layout they are given.
        """
        if f_hat.device.type == "cpu" and f_hat.ndim == 4:
            image = self.decoder(self.post_quant_conv(f_hat.contiguous(memory_format=torch.channels_last)))
            return image.clamp(-1, 1).contiguous()
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def _indices_to_maps(self, indices: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """(B, pn^2) index tensors -> (B, Cvae, pn, pn) code maps."""
        if len(indices) == 0:
            raise ValueError("indices must hold at least one scale")
        maps = []
        for k, idx in enumerate(indices):
            if idx.ndim != 2:
                raise ValueError(f"indices[{k}] must have shape (B, pn*pn), got {tuple(idx.shape)}")
            pn = math.isqrt(idx.shape[1])
            if pn * pn != idx.shape[1]:
                raise ValueError(f"indices[{k}] has {idx.shape[1]} entries per row, not a square number")
            emb = self.quantize.embedding(idx)  # (B, pn*pn, C)
            maps.append(emb.transpose(1, 2).reshape(idx.shape[0], self.Cvae, pn, pn))
        return maps

    @apply_forward_hook
    def indices_to_f_hat(self, indices: Sequence[torch.LongTensor]) -> torch.Tensor:
        """Sum over scales of phi(upsampled code map): (B, Cvae, pn_K, pn_K).

        Patch sizes are read from the indices (row length pn^2).
        """
        maps = self._indices_to_maps(indices)
        size = maps[-1].shape[-1]
        num_scales = len(maps)
        f_hat = maps[-1].new_zeros(maps[-1].shape)  # contiguous, unlike the transposed code maps
        for k, h in enumerate(maps):
            if k < num_scales - 1:
                h = F.interpolate(h, size=(size, size), mode="bicubic")
            f_hat = f_hat + self.quantize.quant_resi(h, k, num_scales)
        return f_hat

    @apply_forward_hook
    def indices_to_image(self, indices: Sequence[torch.LongTensor]) -> torch.Tensor:
        """Decode multi-scale indices to an image in [-1, 1].

        Official ``idxBl_to_img(same_shape=True, last_one=True)``.
        """
        return self.decode_latent(self.indices_to_f_hat(indices))

    # ---------------------------------------------------------------- autoregressive inputs

    @apply_forward_hook
    def next_scale_input(self, scale_index: int, f_hat: torch.Tensor, h: torch.Tensor,
                         patch_nums: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale ``scale_index``'s code map h (B,Cvae,pn,pn) to f_hat (B,Cvae,pn_K,pn_K).

        Returns the new f_hat and the next scale's input (f_hat area-downsampled to pn_{k+1}),
        or None as the second item after the last scale (``get_next_autoregressive_input``).
        """
        patch_nums = self._patch_nums(patch_nums)
        num_scales = len(patch_nums)
        if not 0 <= scale_index < num_scales:
            raise ValueError(f"scale_index must be in [0, {num_scales - 1}], got {scale_index}")
        size = patch_nums[-1]
        if scale_index == num_scales - 1:
            return f_hat + self.quantize.quant_resi(h, scale_index, num_scales), None
        up = F.interpolate(h, size=(size, size), mode="bicubic")
        f_hat = f_hat + self.quantize.quant_resi(up, scale_index, num_scales)
        nxt = patch_nums[scale_index + 1]
        return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")

    @apply_forward_hook
    def teacher_forcing_input(self, indices: Sequence[torch.LongTensor]) -> torch.Tensor:
        """Inputs of scales 2..K from ground-truth indices: (B, L - 1, Cvae) (``idxBl_to_var_input``)."""
        maps = self._indices_to_maps(indices)
        patch_nums = [m.shape[-1] for m in maps]
        batch = maps[0].shape[0]
        f_hat = maps[0].new_zeros(batch, self.Cvae, patch_nums[-1], patch_nums[-1])
        inputs = []
        for k in range(len(maps) - 1):
            f_hat, nxt = self.next_scale_input(k, f_hat, maps[k], patch_nums)
            inputs.append(nxt.flatten(2).transpose(1, 2))
        if not inputs:
            return f_hat.new_zeros(batch, 0, self.Cvae)
        return torch.cat(inputs, dim=1)

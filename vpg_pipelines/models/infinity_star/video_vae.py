"""InfinityStar's video tokenizer: a Wan-style causal 3-D VAE with two-stage binary spherical codes.

Re-implementation of the official ``videovae`` 10 ("absorbed patchify"): the convolutional encoder
/ decoder work on 16 latent channels at 8x spatial, 4x temporal compression; a 2x2 pixel
(un)shuffle at the boundary gives the 64-channel, 16x latent the transformer sees. Codes are bits:
a semantic codebook (16 bits) for small scales and a detail codebook (64 bits) for large ones. A
scale's codes are interpolated (trilinearly, over channel, height and width) to the clip's full
latent size before they are added to the summed codes.

State-dict keys equal the official ``infinitystar_videovae.pth`` (``vae`` entry) except the four
codebook ``mask`` buffers (``2 ** i``, stored twice through the official ``quantize`` alias), which
hold no learned values and are not kept (see :data:`DERIVED_KEYS`; safetensors cannot store aliases).

Memory savers with diffusers' autoencoder names: ``enable_tiling(...)`` decodes in overlapping spatial
tiles blended where they meet (:mod:`.vae_tiling`), each through the official causal temporal chunks;
``enable_slicing()`` (on by default, as the official code decodes one video at a time) decodes and
encodes the batch one sample at a time; ``disable_slicing()`` runs the batch at once.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from .vae_tiling import LATENT_STRIDE, TileSettings, decode_tiled

DERIVED_KEYS = re.compile(r"^quantizer?\.lfq_(semantic|detail)\.mask$")
"""Keys of the official file that hold no learned values (the codebooks' ``2 ** i`` bit weights)."""

ConvCache = dict[nn.Module, torch.Tensor]
"""Last input frames of every causal convolution, carried from one temporal chunk to the next."""

_SAFE_CONV_GIB = 2.0  # above this input size (counted at 2 bytes/value) a convolution runs in time slices


class CausalConv3d(nn.Module):
    """3-D convolution, causal in time (replicated first frame, or the previous chunk's last frames)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.time_kernel = kernel_size
        self.space_pad = kernel_size // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        k = self.time_kernel
        if k > 1:
            previous = cache.get(self) if cache is not None else None
            head = previous.to(x) if previous is not None else x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
            x = torch.cat([head, x], dim=2)
            if cache is not None:
                cache[self] = x[:, :, -(k - 1) :].clone()
        p = self.space_pad
        if p:
            x = F.pad(x, (p, p, p, p))
        return self._conv_in_slices(x)

    def _conv_in_slices(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution, split over time when the input is large (same result, bounded workspace)."""
        size_gib = x.shape[1] * x.shape[2] * x.shape[3] * x.shape[4] * 2 / 1024**3
        k = self.time_kernel
        out_frames = x.shape[2] - k + 1
        parts = int(size_gib / _SAFE_CONV_GIB) + 1
        if parts <= 1 or out_frames <= 1:
            return self.conv(x)
        bounds = torch.linspace(0, out_frames, parts + 1).round().long().tolist()
        outs = [self.conv(x[:, :, a : b + k - 1]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        return torch.cat(outs, dim=2)


class RMSNorm3d(nn.Module):
    """Per-voxel RMS normalisation over channels with a learned gain (official ``RMS_norm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class SpatialNorm3d(nn.Module):
    """RMS norm modulated by the latent (``norm * conv_y(z) + conv_b(z)``), first frame resized alone."""

    def __init__(self, channels: int, latent_channels: int) -> None:
        super().__init__()
        self.norm_layer = RMSNorm3d(channels)
        self.conv_y = CausalConv3d(latent_channels, channels, kernel_size=1)
        self.conv_b = CausalConv3d(latent_channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:
            first = F.interpolate(zq[:, :, :1], size=(1, *f.shape[-2:]))
            rest = F.interpolate(zq[:, :, 1:], size=(f.shape[2] - 1, *f.shape[-2:]))
            zq = torch.cat([first, rest], dim=2)
        else:
            zq = F.interpolate(zq, size=f.shape[-3:])
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class ResnetBlock3d(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> conv, plus the input (channels are kept)."""

    def __init__(self, channels: int, latent_channels: int | None = None) -> None:
        super().__init__()
        if latent_channels is None:
            self.norm1, self.norm2 = RMSNorm3d(channels), RMSNorm3d(channels)
        else:
            self.norm1 = SpatialNorm3d(channels, latent_channels)
            self.norm2 = SpatialNorm3d(channels, latent_channels)
        self.conv1 = CausalConv3d(channels, channels)
        self.conv2 = CausalConv3d(channels, channels)

    def _norm(self, norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        return norm(x) if zq is None else norm(x, zq)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None, cache: ConvCache) -> torch.Tensor:
        h = self.conv1(F.silu(self._norm(self.norm1, x, zq)), cache)
        h = self.conv2(F.silu(self._norm(self.norm2, h, zq)), cache)
        return x + h


def _space_to_channels(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``b c t (h ph) (w pw) -> b (ph pw c) t h w``."""
    b, c, t, hh, ww = x.shape
    x = x.view(b, c, t, hh // factor, factor, ww // factor, factor)
    return x.permute(0, 4, 6, 1, 2, 3, 5).reshape(b, factor * factor * c, t, hh // factor, ww // factor)


class DownBlock3d(nn.Module):
    """Space-to-channel downsampling (and temporal mean) with an averaged shortcut (``DCDownBlock3d``)."""

    def __init__(self, in_channels: int, out_channels: int, time_factor: int) -> None:
        super().__init__()
        self.time_factor = time_factor
        self.norm = RMSNorm3d(in_channels)
        self.conv = CausalConv3d(in_channels, out_channels // 4)

    def _squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """Odd frame counts keep their first frame alone; the rest is averaged in groups of the factor."""
        frames = x.shape[2]
        parts = []
        if frames % 2 == 1:
            parts.append(_space_to_channels(x[:, :, :1], 2))
            x = x[:, :, 1:]
        if x.shape[2]:
            y = _space_to_channels(x, 2)
            b, c, t, h, w = y.shape
            parts.append(y.view(b, c, t // self.time_factor, self.time_factor, h, w).mean(dim=3))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]

    def forward(self, hidden: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        x = self._squeeze(self.conv(F.silu(self.norm(hidden)), cache))
        y = self._squeeze(hidden)
        b, _, t, h, w = y.shape
        y = y.view(b, -1, x.shape[1], t, h, w).mean(dim=1)
        return x + y


class UpBlock3d(nn.Module):
    """Channel-to-space upsampling (and temporal repeat) with a tiled shortcut (``DCUpBlock3d``)."""

    def __init__(self, in_channels: int, out_channels: int, time_factor: int) -> None:
        super().__init__()
        self.time_factor = time_factor
        conv_out = out_channels * 4 * time_factor
        self.repeats = conv_out // in_channels
        self.norm = RMSNorm3d(in_channels)
        self.conv = CausalConv3d(in_channels, conv_out)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        """``b (pt ph pw c) t h w -> b c (t pt) (h ph) (w pw)``."""
        b, cc, t, h, w = x.shape
        pt = self.time_factor
        c = cc // (pt * 4)
        x = x.view(b, pt, 2, 2, c, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
        return x.reshape(b, c, t * pt, h * 2, w * 2)

    def forward(self, hidden: torch.Tensor, cache: ConvCache, split_first: bool) -> torch.Tensor:
        compress_first = hidden.shape[2] % 2 == 1 or split_first
        x = self._unfold(self.conv(F.silu(self.norm(hidden)), cache))
        y = self._unfold(hidden.repeat(1, self.repeats, 1, 1, 1))
        pt = self.time_factor
        if pt > 1 and compress_first:
            x = torch.cat([x[:, :, :pt].mean(dim=2, keepdim=True), x[:, :, pt:]], dim=2)
            y = torch.cat([y[:, :, :pt].mean(dim=2, keepdim=True), y[:, :, pt:]], dim=2)
        return x + y


class _Resampler(nn.Module):
    """Holds a down/up block as ``.conv`` (the official key layout ``*samplers.0.conv.*``)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv = block


class EncoderStage(nn.Module):
    def __init__(self, channels: int, out_channels: int, layers: int, time_factor: int | None, down: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3d(channels) for _ in range(layers)])
        self.downsamplers = (
            nn.ModuleList([_Resampler(DownBlock3d(channels, out_channels, time_factor or 1))]) if down else None
        )

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, None, cache)
        if self.downsamplers is not None:
            x = self.downsamplers[0].conv(x, cache)
        return x


class DecoderStage(nn.Module):
    def __init__(
        self, channels: int, out_channels: int, layers: int, latent: int, time_factor: int | None, up: bool
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3d(channels, latent) for _ in range(layers)])
        self.upsamplers = (
            nn.ModuleList([_Resampler(UpBlock3d(channels, out_channels, time_factor or 1))]) if up else None
        )

    def forward(self, x: torch.Tensor, zq: torch.Tensor, cache: ConvCache, split_first: bool) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, zq, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0].conv(x, cache, split_first)
        return x


class MidBlock3d(nn.Module):
    def __init__(self, channels: int, latent: int | None = None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3d(channels, latent) for _ in range(2)])

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None, cache: ConvCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, zq, cache)
        return x


def _stage_factors(num_stages: int, factors: tuple[int, ...], reverse: bool) -> list[int | None]:
    """Per-stage compression factor: the first stages for the encoder, the last ones (reversed) for the decoder."""
    if not reverse:
        return [factors[i] if i < len(factors) else None for i in range(num_stages)]
    out: list[int | None] = []
    for i in range(num_stages):
        j = i - (num_stages - len(factors))
        out.append(factors[-j] if j >= 0 else None)
    return out


class VideoEncoder(nn.Module):
    def __init__(self, in_channels, latent_channels, block_out_channels, layers, time_factors, space_factors):
        super().__init__()
        ch = list(block_out_channels)
        stages = len(ch) - 1
        tf = _stage_factors(stages, time_factors, reverse=False)
        sf = _stage_factors(stages, space_factors, reverse=False)
        self.conv_in = CausalConv3d(in_channels, ch[0])
        self.down_blocks = nn.ModuleList(
            [EncoderStage(ch[i], ch[i + 1], layers, tf[i], bool(tf[i] or sf[i])) for i in range(stages)]
        )
        self.mid_block = MidBlock3d(ch[-1])
        self.norm_out = RMSNorm3d(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * latent_channels)

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for stage in self.down_blocks:
            x = stage(x, cache)
        x = self.mid_block(x, None, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class VideoDecoder(nn.Module):
    def __init__(self, latent_channels, out_channels, block_out_channels, layers, time_factors, space_factors):
        super().__init__()
        ch = list(reversed(block_out_channels))
        stages = len(ch) - 1
        tf = _stage_factors(stages, time_factors, reverse=True)
        sf = _stage_factors(stages, space_factors, reverse=True)
        self.conv_in = CausalConv3d(latent_channels, ch[0])
        self.mid_block = MidBlock3d(ch[0], latent_channels)
        self.up_blocks = nn.ModuleList(
            [
                DecoderStage(ch[i], ch[i + 1], layers + 1, latent_channels, tf[i], bool(tf[i] or sf[i]))
                for i in range(stages)
            ]
        )
        self.norm_out = SpatialNorm3d(ch[-1], latent_channels)
        self.conv_out = CausalConv3d(ch[-1], out_channels)

    def forward(self, z: torch.Tensor, cache: ConvCache, split_first: bool) -> torch.Tensor:
        x = self.conv_in(z, cache)
        x = self.mid_block(x, z, cache)
        for stage in self.up_blocks:
            x = stage(x, z, cache, split_first)
        return self.conv_out(F.silu(self.norm_out(x, z)), cache)


class BinarySphericalCodebook(nn.Module):
    """Bits <-> codes of one BSQ codebook: a bit b gives (2b - 1) / sqrt(d)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def codes(self, bits: torch.Tensor) -> torch.Tensor:
        """``(B, t, h, w, d)`` bits in {0, 1} -> ``(B, d, t, h, w)`` float32 unit-norm codes."""
        if bits.shape[-1] != self.bits:
            raise ValueError(f"expected {self.bits} bits per site, got {bits.shape[-1]}")
        codes = F.normalize(bits.float() * 2 - 1, dim=-1)
        return codes.movedim(-1, 1)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d, t, h, w)`` features -> (codes, bits ``(B, t, h, w, d)``): the sign of each channel."""
        bits = (z.movedim(1, -1) > 0).long()
        return self.codes(bits).to(z.dtype), bits


class TwoStageQuantizer(nn.Module):
    """The semantic and detail codebooks and the interpolation that lifts codes to the clip's grid."""

    upsample_mode = "trilinear"
    downsample_mode = "area"

    def __init__(self, semantic_bits: int, detail_bits: int) -> None:
        super().__init__()
        self.lfq_semantic = BinarySphericalCodebook(semantic_bits)
        self.lfq_detail = BinarySphericalCodebook(detail_bits)

    @staticmethod
    def resize(codes: torch.Tensor, channels: int, size: tuple[int, int, int], mode: str) -> torch.Tensor:
        """Resize ``(B, C, T, H, W)`` over (channels, height, width) per frame (official ``interpolate``).

        The frame count must already match ``size[0]``.
        """
        if codes.shape[2] != size[0]:
            raise ValueError(f"codes have {codes.shape[2]} frames, the target {size[0]}")
        if tuple(codes.shape[1:]) == (channels, *size):
            return codes
        x = codes.transpose(1, 2)  # (B, T, C, H, W): frames act as channels of a 3-D resize
        x = F.interpolate(x, size=(channels, size[1], size[2]), mode=mode)
        return x.transpose(1, 2)

    def lift(self, bits: torch.Tensor, channels: int, size: tuple[int, int, int], semantic: bool) -> torch.Tensor:
        """Codes of ``bits`` resized to ``(B, channels, *size)`` (what is added to the summed codes)."""
        book = self.lfq_semantic if semantic else self.lfq_detail
        return self.resize(book.codes(bits), channels, size, self.upsample_mode).contiguous()


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``(B, c, t, H, W) -> (B, 4c, t, H/2, W/2)`` by per-frame pixel unshuffle."""
    return F.pixel_unshuffle(x.transpose(1, 2), 2).transpose(1, 2)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    return F.pixel_shuffle(x.transpose(1, 2), 2).transpose(1, 2)


class InfinityStarVideoVAE(ModelMixin, ConfigMixin):
    """Causal video VAE + two-stage BSQ codebooks of InfinityStar (official ``videovae`` 10).

    Args:
        in_channels / out_channels: video channels.
        latent_channels: channels of the convolutional latent (8x spatial); the transformer's latent
            has ``4 * latent_channels`` channels at 16x after the absorbed 2x2 patchify.
        block_out_channels: channels per resolution level (encoder order).
        layers_per_block: residual blocks per encoder level (decoder levels have one more).
        temporal_compression / spatial_compression: per-level factors (first encoder levels).
        semantic_bits / detail_bits: bits of the two codebooks.
        detail_scale_min_tokens: a scale with ``h * w`` at least this uses the detail codebook.
        use_feat_proj: 2 = the official 64 -> 64 linear maps around the latent; 0 = none.
        decode_chunk_frames: latent frames per decoder chunk (official 2; the first chunk takes the
            odd remainder); encode chunks are ``2 * prod(temporal_compression)`` video frames.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["ResnetBlock3d"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: tuple[int, ...] = (96, 192, 384, 384, 384),
        layers_per_block: int = 2,
        temporal_compression: tuple[int, ...] = (2, 2),
        spatial_compression: tuple[int, ...] = (2, 2, 2),
        semantic_bits: int = 16,
        detail_bits: int = 64,
        detail_scale_min_tokens: int = 750,
        use_feat_proj: int = 2,
        decode_chunk_frames: int = 2,
    ) -> None:
        super().__init__()
        if use_feat_proj not in (0, 2):
            raise ValueError(f"`use_feat_proj` must be 0 or 2, got {use_feat_proj}")
        if len(spatial_compression) != len(block_out_channels) - 2:
            raise ValueError("`spatial_compression` needs one factor per level but the last")
        dim = 4 * latent_channels
        self.encoder = VideoEncoder(in_channels, latent_channels, block_out_channels, layers_per_block,
                                    tuple(temporal_compression), tuple(spatial_compression))
        self.decoder = VideoDecoder(latent_channels, out_channels, block_out_channels, layers_per_block,
                                    tuple(temporal_compression), tuple(spatial_compression))
        self.quantizer = TwoStageQuantizer(semantic_bits, detail_bits)
        if use_feat_proj == 2:
            self.proj_down, self.proj_down_two = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.proj_up, self.proj_up_two = nn.Linear(dim, dim), nn.Linear(dim, dim)
        else:
            self.proj_down = self.proj_up = nn.Identity()
        self.scale_learnable_parameters = nn.Parameter(torch.ones(4))
        self.use_slicing = True  # the official decoder runs one video at a time
        self.use_tiling = False
        self.tile_settings = TileSettings()

    # -- memory savers (diffusers' autoencoder API) ------------------------------------------------------
    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        """Decode in spatial tiles of ``tile_sample_min_*`` pixels every ``tile_sample_stride_*`` pixels, blending
        the ``min - stride`` pixels where neighbours overlap (default 512 every 384; :mod:`.vae_tiling` says why).
        Videos no larger than one tile decode untiled. Arguments left ``None`` keep their current value; sizes
        are multiples of 16 pixels, ``min / 2 <= stride <= min``."""
        current = self.tile_settings
        self.tile_settings = TileSettings(
            tile_sample_min_height or current.min_height, tile_sample_min_width or current.min_width,
            tile_sample_stride_height or current.stride_height, tile_sample_stride_width or current.stride_width)
        self.use_tiling = True

    def disable_tiling(self) -> None:
        """Decode every frame in one piece again."""
        self.use_tiling = False

    def enable_slicing(self) -> None:
        """Decode and encode one sample of the batch at a time (the default, as officially)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        """Decode and encode the whole batch at once (faster for small videos, more memory)."""
        self.use_slicing = False

    @property
    def codebook_dim(self) -> int:
        """Channels of the transformer-side latent (64)."""
        return 4 * self.config.latent_channels

    @property
    def temporal_factor(self) -> int:
        return math.prod(self.config.temporal_compression)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`decode`."""
        return self.decode(latents)

    @apply_forward_hook
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Summed codes ``(B, 64, T, h, w)`` -> video ``(B, 3, 1 + 4(T-1), 16h, 16w)`` (unclamped, ~[-1, 1])."""
        z = self.decoder_latent(latents)
        samples = z.split(1) if self.use_slicing else [z]
        if self.tiles_needed(latents):
            out = self.empty_video(z)
            for sample, target in zip(samples, out.split(samples[0].shape[0])):
                decode_tiled(sample, self.decode_chunks, self.tile_settings, target)
            return out
        videos = [torch.cat(list(self.decode_chunks(sample)), dim=2) for sample in samples]
        return torch.cat(videos) if len(videos) > 1 else videos[0]

    def decoder_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Summed codes ``(B, 64, T, h, w)`` -> the convolutional decoder's latent ``(B, 16, T, 2h, 2w)``."""
        if latents.dim() != 5 or latents.shape[1] != self.codebook_dim:
            raise ValueError(f"`latents` must be (B, {self.codebook_dim}, T, h, w), got {tuple(latents.shape)}")
        z = latents / self.scale_learnable_parameters[0]
        z = self.proj_up(z.movedim(1, -1)).movedim(-1, 1)
        return unpatchify(z)

    def tiles_needed(self, latents: torch.Tensor) -> bool:
        """Whether :meth:`decode` tiles ``latents`` (tiling on and the video larger than one tile)."""
        patch = 2  # the absorbed 2x2 patchify between the summed codes and the decoder latent
        return self.use_tiling and self.tile_settings.needed(patch * latents.shape[3], patch * latents.shape[4])

    def empty_video(self, z: torch.Tensor) -> torch.Tensor:
        """The zero video the tiles of decoder latent ``z`` are blended into."""
        b, _, frames, h, w = z.shape
        shape = (b, self.config.out_channels, 1 + self.temporal_factor * (frames - 1), LATENT_STRIDE * h,
                 LATENT_STRIDE * w)
        return z.new_zeros(shape)

    def decode_chunks(self, z: torch.Tensor):
        """The video of ``z`` chunk by chunk, exactly like the official ``_decode`` (the chunking shapes the
        output): ``decode_chunk_frames`` latent frames per chunk, the first chunk taking the odd remainder,
        one convolution cache carried through (the causal frames each chunk needs from the previous one)."""
        per = self.config.decode_chunk_frames
        frames = z.shape[2]
        chunks = max(frames // per, 1)
        split_first = frames % per == 0
        if split_first:
            chunks = max(chunks - 1, 1)
        extra = frames % per + (per if split_first else 0)
        cache: ConvCache = {}
        start = 0
        for i in range(chunks):
            end = per * (i + 1) + extra
            yield self.decoder(z[:, :, start:end], cache, split_first)
            start, split_first = end, False

    @apply_forward_hook
    def encode(
        self, video: torch.Tensor, generator: torch.Generator | None = None, sample_posterior: bool = True
    ) -> torch.Tensor:
        """Video ``(B, 3, 1 + 4k, H, W)`` in [-1, 1] -> continuous latent ``(B, 64, 1 + k, H/16, W/16)``.

        The official encoder samples the Gaussian posterior; ``sample_posterior=False`` takes its mean.
        """
        if video.dim() == 4:
            video = video.unsqueeze(2)
        samples = video.split(1) if self.use_slicing else [video]
        h = torch.cat([self._encode_one(sample) for sample in samples])
        mean, logvar = patchify(h).chunk(2, dim=1)
        z = mean
        if sample_posterior:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            gen_device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype)
            z = mean + std * noise.to(mean.device)
        if self.config.use_feat_proj == 2:
            z = self.proj_down(z.movedim(1, -1)).movedim(-1, 1)
        return z * self.scale_learnable_parameters[0]

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        per = 2 * self.temporal_factor
        frames = x.shape[2]
        chunks = max(frames // per, 1)
        extra = frames % per
        cache: ConvCache = {}
        out = []
        for i in range(chunks):
            start = per * i + (0 if i == 0 else extra)
            out.append(self.encoder(x[:, :, start : per * (i + 1) + extra], cache))
        return torch.cat(out, dim=2)

    @apply_forward_hook
    def codes_from_bits(self, bits: torch.Tensor, size: tuple[int, int, int], semantic: bool) -> torch.Tensor:
        """One scale's bits ``(B, t, h, w, d)`` -> codes on the clip grid ``(B, 64, *size)`` (float32)."""
        return self.quantizer.lift(bits, self.codebook_dim, tuple(size), semantic)

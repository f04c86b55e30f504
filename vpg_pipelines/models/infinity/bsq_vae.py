"""Infinity's multi-scale BSQ VAE (binary spherical quantization), re-implemented.

Module keys match the official ``infinity_vae_*.pth`` files (``vae`` entry): every convolution sits
one level down as ``….conv.weight`` and every GroupNorm as ``….norm.weight``. The official files
also carry the derived buffer ``quantizer.lfq.mask`` (alias ``quantize.lfq.mask``), which we do not
store (see :data:`DERIVED_KEYS`); :func:`canonical_vae_state_dict` maps both official spellings
(with or without the wrapper level) onto our keys.

Quantization (per site, d bits): ``u = z / |z|``, ``bit = u > 0``, ``code = (2 bit - 1) / sqrt(d)``.
Multi-scale residual encoding area-downsamples the residual to each scale's grid, quantizes it and
subtracts the trilinear upsampled codes; the transformer's next-scale input is the trilinear
downsampling of the accumulated codes (see :meth:`InfinityBSQVAE.next_scale_input`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

DERIVED_KEYS = re.compile(r"^(quantizer|quantize)\.lfq\.mask$")
"""Official keys that hold no learned values (the bit weights 2^(d-1) … 1)."""

Grid = tuple[int, int]


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class Conv(nn.Module):
    """A 2-D convolution one key level down (``<name>.conv.weight``), as in the official files."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """GroupNorm (32 groups, or 24 when the width is not a multiple of 32), eps 1e-6, affine."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 32 == 0:
            groups = 32
        elif channels % 24 == 0:
            groups = 24
        else:
            raise ValueError(f"VAE channel width {channels} is a multiple of neither 32 nor 24 (GroupNorm groups)")
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = Conv(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = Conv(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = Conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), then an optional ``downsample``/``upsample``."""

    def __init__(self, blocks: list[nn.Module], resample_name: str | None, resample: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample_name is not None:
            self.add_module(resample_name, resample)
        self.resample_name = resample_name

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            h = block(h)
        if self.resample_name is not None:
            h = getattr(self, self.resample_name)(h)
        return h


class Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(h))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, num_down: int,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv_in = Conv(in_channels, ch, 3, padding=1)
        in_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_in = ch * in_mult[i]
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult))
                block_in = ch * mult
            down = i < num_down
            self.down.append(Level(blocks, "downsample" if down else None, Downsample(block_in) if down else None))
        self.mid = Mid(block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """``up`` is stored in increasing level order (``up.0`` = full resolution) but run from the top."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, num_up: int,
                 out_channels: int = 3) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = Conv(z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in)
        levels: list[Level] = []
        for i in reversed(range(len(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * ch_mult[i]))
                block_in = ch * ch_mult[i]
            up = 1 <= i <= num_up
            levels.insert(0, Level(blocks, "upsample" if up else None, Upsample(block_in) if up else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(_swish(self.norm_out(h)))


@dataclass
class BSQEncoding:
    """Result of :meth:`InfinityBSQVAE.encode`.

    Attributes:
        features: ``(B, d, H, W)`` continuous encoder output.
        bits: per scale ``(B, 1, h, w, d)`` int32 bits.
        latent: ``(B, d, H, W)`` sum of the upsampled per-scale codes (what the decoder takes).
    """

    features: torch.Tensor
    bits: list[torch.Tensor]
    latent: torch.Tensor


def _as_grid(size: Sequence[int]) -> Grid:
    """``(h, w)`` from ``(h, w)`` or ``(1, h, w)``."""
    size = tuple(int(s) for s in size)
    if len(size) == 3:
        if size[0] != 1:
            raise ValueError(f"image schedules have t = 1, got {size}")
        size = size[1:]
    if len(size) != 2:
        raise ValueError(f"a grid is (h, w) or (1, h, w), got {size}")
    return size


def _as_5d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(2) if x.dim() == 4 else x


def upsample_codes(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Trilinear resize (``align_corners=False``) of ``(B, d, [1,] h, w)`` to ``(B, d, 1, H, W)``."""
    h, w = _as_grid(grid)
    return F.interpolate(_as_5d(x), size=(1, h, w), mode="trilinear")


def downsample_area(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Area resize (adaptive average pooling) of ``(B, d, [1,] H, W)`` to ``(B, d, 1, h, w)``."""
    h, w = _as_grid(grid)
    return F.interpolate(_as_5d(x), size=(1, h, w), mode="area")


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``(B, d, 2h, 2w)`` -> ``(B, 4d, h, w)``; channel index ``c*4 + 2*dy + dx`` (pixel_unshuffle)."""
    return F.pixel_unshuffle(x, 2)


def unpatchify_bits(bits: torch.Tensor) -> torch.Tensor:
    """Transformer-site bits ``(B, h, w, 4d)`` -> VAE-site bits ``(B, 2h, 2w, d)`` (pixel_shuffle)."""
    return F.pixel_shuffle(bits.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def patchify_bits(bits: torch.Tensor) -> torch.Tensor:
    """VAE-site bits ``(B, 2h, 2w, d)`` -> transformer-site bits ``(B, h, w, 4d)``."""
    return F.pixel_unshuffle(bits.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def flatten_sites(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, [1,] h, w)`` -> ``(B, h*w, C)``, row-major (h outer, w inner)."""
    if x.dim() == 5:
        x = x.squeeze(2)
    return x.flatten(2).transpose(1, 2)


class BSQQuantizer(nn.Module):
    """The binary spherical quantizer of one site: no weights (``lfq.mask`` is derived)."""

    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_dim = codebook_dim
        self.codebook_scale = 1.0 / math.sqrt(codebook_dim)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel-last ``(..., d)`` -> (codes (..., d), bits (..., d) int32), straight-through form."""
        u = F.normalize(z.float(), dim=-1)
        sign = torch.where(u > 0, torch.ones_like(u), -torch.ones_like(u))
        quantized = u + (sign * self.codebook_scale - u)
        return quantized, (quantized > 0).int()

    def bits_to_code_vectors(self, bits: torch.Tensor) -> torch.Tensor:
        """Channel-last bits ``(..., d)`` -> unit code vectors ``(..., d)`` float32."""
        codes = bits.float() * self.codebook_scale * 2 - self.codebook_scale
        return F.normalize(codes, dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d, 1, h, w)`` -> codes ``(B, d, 1, h, w)``, bits ``(B, 1, h, w, d)``."""
        codes, bits = self.quantize(z.permute(0, 2, 3, 4, 1))
        return codes.permute(0, 4, 1, 2, 3), bits


class InfinityBSQVAE(ModelMixin, ConfigMixin):
    """Encoder, decoder and multi-scale BSQ quantizer of Infinity.

    Args mirror the official ``vae_model`` arguments: ``codebook_dim`` bits per site, ``patch_size``
    (16, or 8 for the 8B model's VAE), ``base_ch``, ``encoder_ch_mult`` / ``decoder_ch_mult``,
    ``num_res_blocks``.
    """

    _no_split_modules = ["ResnetBlock"]

    @register_to_config
    def __init__(
        self,
        codebook_dim: int = 32,
        patch_size: int = 16,
        base_ch: int = 128,
        encoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4),
        decoder_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4),
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        num_down = int(round(math.log2(patch_size)))
        if patch_size < 1 or 2**num_down != patch_size:
            raise ValueError(f"`patch_size` must be a power of two, got {patch_size}")
        if num_down > len(encoder_ch_mult) or num_down > len(decoder_ch_mult):
            raise ValueError(f"`patch_size` {patch_size} needs at least {num_down} levels in the channel multipliers")
        if codebook_dim < 1:
            raise ValueError(f"`codebook_dim` must be positive, got {codebook_dim}")
        self.encoder = Encoder(base_ch, encoder_ch_mult, num_res_blocks, codebook_dim, num_down)
        self.decoder = Decoder(base_ch, decoder_ch_mult, num_res_blocks, codebook_dim, num_down)
        self.quantizer = BSQQuantizer(codebook_dim)

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    def forward(self, images: torch.Tensor, scale_schedule: Sequence[Sequence[int]]) -> torch.Tensor:
        """Reconstruction ``(B, 3, H, W)`` in [-1, 1] through the multi-scale quantizer."""
        return self.decode(self.encode(images, scale_schedule).latent)

    @apply_forward_hook
    def encode_features(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output ``(B, d, H/p, W/p)`` float32 of images in [-1, 1]."""
        return self.encoder(images.to(self.dtype)).float()

    @apply_forward_hook
    def encode(self, images: torch.Tensor, scale_schedule: Sequence[Sequence[int]]) -> BSQEncoding:
        """Encoder features, per-scale bits and the quantized latent (official ``vae.encode``)."""
        features = self.encode_features(images)
        bits, latent = self.quantize_multiscale(features, scale_schedule)
        return BSQEncoding(features, bits, latent)

    def quantize_multiscale(
        self, features: torch.Tensor, scale_schedule: Sequence[Sequence[int]]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residual multi-scale quantization of ``(B, d, H, W)`` features; the last grid must be (H, W)."""
        grids = [_as_grid(s) for s in scale_schedule]
        full = tuple(features.shape[-2:])
        if not grids or grids[-1] != full:
            raise ValueError(f"the last grid of `scale_schedule` must equal the feature grid {full}, got {grids[-1:]}")
        residual = _as_5d(features.float())
        latent = torch.zeros_like(residual)
        bits_per_scale = []
        for grid in grids:
            part = residual if grid == full else downsample_area(residual, grid)
            codes, bits = self.quantizer(part)
            if grid != full:
                codes = upsample_codes(codes, full)
            residual = residual - codes
            latent = latent + codes
            bits_per_scale.append(bits)
        return bits_per_scale, latent.squeeze(2)

    def bits_to_codes(self, bits: torch.Tensor) -> torch.Tensor:
        """Bits ``(B, 1, h, w, d)`` (or ``(B, h, w, d)``) -> codes ``(B, d, 1, h, w)`` float32."""
        if bits.dim() == 4:
            bits = bits.unsqueeze(1)
        return self.quantizer.bits_to_code_vectors(bits).permute(0, 4, 1, 2, 3)

    def codes_from_bits(self, bits_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum of the per-scale codes upsampled to the last scale's grid: ``(B, d, H, W)``."""
        full = tuple(bits_per_scale[-1].shape[-3:-1])
        total = 0
        for bits in bits_per_scale:
            total = total + upsample_codes(self.bits_to_codes(bits), full)
        return total.squeeze(2)

    @staticmethod
    def next_scale_input(summed_codes: torch.Tensor, grid: Sequence[int], spatial_patchify: bool = False
                         ) -> torch.Tensor:
        """Transformer input of a scale: trilinear resize of the accumulated codes, ``(B, h*w, d_t)``.

        ``grid`` is the VAE-resolution grid (``(2h, 2w)`` with spatial patchify, which then folds
        each 2x2 block of sites into one transformer site of ``4d`` channels).
        """
        x = upsample_codes(summed_codes, grid).squeeze(2)
        if spatial_patchify:
            x = patchify(x)
        return flatten_sites(x)

    def teacher_forcing_inputs(
        self, features: torch.Tensor, scale_schedule: Sequence[Sequence[int]], spatial_patchify: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-scale inputs ``(B, L - 1, d_t)`` and target bits ``(B, L, d_t)`` of encoder features.

        ``scale_schedule`` is the VAE-resolution schedule. This is the official training builder
        without bit flips (``BitwiseSelfCorrection.flip_requant``).
        """
        grids = [_as_grid(s) for s in scale_schedule]
        target = _as_5d(features.float())
        summed = torch.zeros_like(target)
        inputs, targets = [], []
        for k, grid in enumerate(grids):
            residual = target - summed
            if k != len(grids) - 1:
                residual = downsample_area(residual, grid)
            codes, bits = self.quantizer(residual)
            summed = summed + upsample_codes(codes, grids[-1])
            if k != len(grids) - 1:
                inputs.append(self.next_scale_input(summed, grids[k + 1], spatial_patchify))
            bits = bits[:, 0]
            if spatial_patchify:
                bits = patchify_bits(bits)
            targets.append(bits.reshape(bits.shape[0], -1, bits.shape[-1]))
        return torch.cat(inputs, 1), torch.cat(targets, 1)

    @apply_forward_hook
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [-1, 1] (clamped) from a ``(B, d, [1,] h, w)`` latent."""
        if latent.dim() == 5:
            latent = latent.squeeze(2)
        return self.decoder(latent.to(self.dtype)).float().clamp(-1, 1)


def canonical_vae_state_dict(
    state: Mapping[str, torch.Tensor], module_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Map an official VAE state dict onto ``module_keys``.

    Keys already in ``module_keys`` are kept; a ``X.weight`` / ``X.bias`` that is not is renamed to
    ``X.conv.…`` or ``X.norm.…`` when that is a module key (the official loader's retry rule).
    The derived ``lfq.mask`` buffers are dropped. Anything else is kept as is, so that a strict load
    reports it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if DERIVED_KEYS.match(key):
            continue
        name = key
        if key not in module_keys:
            stem, dot, leaf = key.rpartition(".")
            for wrapper in ("conv", "norm"):
                candidate = f"{stem}.{wrapper}{dot}{leaf}"
                if candidate in module_keys:
                    name = candidate
                    break
        if name in out:
            raise ValueError(f"VAE checkpoint holds '{name}' twice (as '{key}' and another spelling)")
        out[name] = value
    return out

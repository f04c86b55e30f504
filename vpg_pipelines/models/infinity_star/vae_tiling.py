"""Spatially tiled decoding of the InfinityStar video VAE, with linear blending where tiles overlap.

The layout and the blend are diffusers' (``AutoencoderKLWan.tiled_decode``: tiles of
``tile_sample_min_*`` pixels every ``tile_sample_stride_*`` pixels, the overlap of two neighbours
blended linearly, ``blend_v`` then ``blend_h``), written here as one weighted sum into a preallocated
video: along each axis a tile's weight ramps up from 0 over its overlap with the previous tile and down
to 0 over its overlap with the next one, so the weights of the tiles covering a pixel add up to 1 and a
pixel's value is the same convex combination diffusers' in-place blends compute. Only one tile's
activations and the output video are alive at a time (no list of decoded tiles).

Time: every tile is decoded through all frames with the official causal chunks (two latent frames per
chunk after the first) and its own convolution cache: a chunk needs from the previous frames exactly the
last ``kernel - 1 = 2`` input frames of every causal convolution, at that tile's position, which the
tile's cache holds. That is the temporal tiling; it is exact (the official decoder runs the same
chunks) and needs no blending.

Space: the decoder has no attention, so a pixel depends only on latents within its receptive field;
inside a tile, far enough from its borders, the decode equals the untiled one up to rounding. Near a
border the tile sees zero padding instead of its neighbours' latents: the seam error. The blend gives
those border pixels a small weight; a wider overlap lowers the error (``docs/memory.md`` has the measured
figures).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

LATENT_STRIDE = 8
"""Pixels per site of the decoder's convolutional latent (tiles are cut there, after the 2x2 unpatchify)."""
TILE_MULTIPLE = 16
"""Tile sizes and strides are multiples of the transformer's latent grid (16 pixels)."""
TILE_SAMPLE_MIN = 512
TILE_SAMPLE_STRIDE = 384
EDGE_FRACTION = 0.25
"""Default tiles: 512 pixels every 384, so neighbours overlap by 128 pixels, blended over the central
half (diffusers' Wan VAE: 256 every 192, blended over all 64). Measured on the parity VAE, the seam error
of a tile border decays about 10x per 16 pixels away from it: 128 overlapping pixels with the outer
quarters left to the neighbour keep it near 1e-3 of the video's RMS, where a 64-pixel overlap blended
over its whole width leaves 0.3 (``docs/memory.md``)."""


@dataclass(frozen=True)
class TileSettings:
    """Tile size and stride in pixels (multiples of :data:`TILE_MULTIPLE`), and the share of each overlap
    next to a tile's edge that the neighbour alone covers (see :func:`blend_ramp`)."""

    min_height: int = TILE_SAMPLE_MIN
    min_width: int = TILE_SAMPLE_MIN
    stride_height: int = TILE_SAMPLE_STRIDE
    stride_width: int = TILE_SAMPLE_STRIDE
    edge_fraction: float = EDGE_FRACTION

    def __post_init__(self) -> None:
        names = {"tile_sample_min_height": self.min_height, "tile_sample_min_width": self.min_width,
                 "tile_sample_stride_height": self.stride_height, "tile_sample_stride_width": self.stride_width}
        for name, value in names.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < TILE_MULTIPLE \
                    or value % TILE_MULTIPLE:
                raise ValueError(f"`{name}` must be a positive multiple of {TILE_MULTIPLE} pixels, got {value!r}")
        for axis, tile, stride in (("height", self.min_height, self.stride_height),
                                   ("width", self.min_width, self.stride_width)):
            if not tile / 2 <= stride <= tile:
                raise ValueError(f"`tile_sample_stride_{axis}` must be between half of `tile_sample_min_{axis}` "
                                 f"({tile // 2}) and all of it ({tile}): neighbouring tiles overlap by tile - stride "
                                 f"pixels and at most two tiles may overlap; got {stride}")

    def needed(self, height: int, width: int) -> bool:
        """Whether a latent of ``height x width`` sites (conv latent) spans more than one tile."""
        return height * LATENT_STRIDE > self.min_height or width * LATENT_STRIDE > self.min_width

    def sites(self) -> tuple[int, int, int, int]:
        """``(tile_h, tile_w, stride_h, stride_w)`` in sites of the conv latent."""
        s = LATENT_STRIDE
        return self.min_height // s, self.min_width // s, self.stride_height // s, self.stride_width // s


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start sites of the tiles along an axis of ``size`` sites: every ``stride`` until a tile reaches the end."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + stride)
    return starts


def blend_ramp(overlap: int, edge_fraction: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Weight of the *later* tile over the ``overlap`` pixels two neighbours share (the earlier one gets
    ``1 - ramp``): 0 over the ``edge_fraction`` of the overlap nearest the later tile's edge, 1 over the same
    share at the far end, linear in between (``edge_fraction`` 0: diffusers' ramp over the whole overlap)."""
    skip = int(overlap * edge_fraction)
    span = max(overlap - 2 * skip, 1)
    t = torch.arange(overlap, dtype=torch.float32, device=device)
    return ((t - skip) / span).clamp_(0, 1).to(dtype)


def axis_weights(index: int, starts: list[int], size: int, tile: int, stride: int, edge_fraction: float,
                 dtype: torch.dtype, device: torch.device) -> tuple[slice, torch.Tensor]:
    """Tile ``index`` along one axis: its pixel range in the output and its blend weights there (the weights of
    the tiles covering a pixel add up to 1)."""
    s = LATENT_STRIDE
    start, end = starts[index], min(starts[index] + tile, size)
    length, overlap = (end - start) * s, (tile - stride) * s
    weights = torch.ones(length, dtype=dtype, device=device)
    if overlap and len(starts) > 1:
        ramp = blend_ramp(overlap, edge_fraction, dtype, device)
        if index > 0:
            weights[:overlap] = ramp
        if index + 1 < len(starts):
            weights[length - overlap :] = 1 - ramp
    return slice(start * s, end * s), weights


def decode_tiled(
    z: torch.Tensor,
    decode_chunks: Callable[[torch.Tensor], Iterator[torch.Tensor]],
    settings: TileSettings,
    out: torch.Tensor,
) -> torch.Tensor:
    """Decode ``z`` ``(B, C, T, h, w)`` (the decoder's latent) tile by tile into ``out`` ``(B, 3, F, 8h, 8w)``
    (zeros; filled and returned).

    ``decode_chunks(z_tile)`` yields the tile's video chunk by chunk, in frame order (the causal decode
    with its own cache). Each tile's weights are built when it runs, so what is alive besides ``out`` is
    one tile's, whatever the number of tiles.
    """
    _, _, _, h, w = z.shape
    tile_h, tile_w, stride_h, stride_w = settings.sites()
    rows, cols = tile_starts(h, tile_h, stride_h), tile_starts(w, tile_w, stride_w)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            ys, wy = axis_weights(i, rows, h, tile_h, stride_h, settings.edge_fraction, out.dtype, out.device)
            xs, wx = axis_weights(j, cols, w, tile_w, stride_w, settings.edge_fraction, out.dtype, out.device)
            weight = wy[:, None] * wx[None, :]
            del wy, wx
            frame = 0
            for chunk in decode_chunks(z[:, :, :, top : top + tile_h, left : left + tile_w]):
                frames = chunk.shape[2]
                out[:, :, frame : frame + frames, ys, xs] += chunk * weight
                frame += frames
                del chunk
            if frame != out.shape[2]:
                raise RuntimeError(f"a tile decoded to {frame} frames, the video has {out.shape[2]}")
    return out


def representative_extent(size: int, tile: int, stride: int) -> int:
    """A smaller axis length whose tiles have every length the tiles of ``size`` have (at most two tiles: a
    full one and the last one); the memory planner decodes that instead of the whole axis."""
    starts = tile_starts(size, tile, stride)
    if len(starts) <= 2:
        return size
    return stride + size - starts[-1]


def representative_frames(frames: int, chunk: int) -> int:
    """A smaller latent frame count with the same first chunks as ``frames``: the first chunk and two of
    ``chunk`` frames (after the second chunk the cache and the output are what they were, so every later
    chunk allocates what the third one did)."""
    first = chunk + frames % chunk + (chunk if frames % chunk == 0 else 0)  # as the VAE's ``decode_chunks``
    return min(frames, first + 2 * chunk)

"""Guidance maps: per scale, where Visual Prefix Guidance changed the model's prediction most.

The change at a site is the total-variation distance between the token distributions before VPG
(the clean branch, after CFG) and after it: ``0.5 * sum |softmax(guided) - softmax(clean)|``, in
[0, 1]. It is 0 on scales VPG did not guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# a perceptually ordered dark-to-bright ramp (black, purple, red, orange, pale yellow)
_RAMP = torch.tensor(
    [[0.0, 0.0, 0.02], [0.33, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]]
)
NORMALIZE = ("per scale", "shared")


@dataclass
class GuidanceMaps:
    """What flows through ``VPG_GUIDANCE``.

    Attributes:
        maps: one ``(B, h_k, w_k)`` tensor per scale, values in [0, 1].
        images: the generated images ``(B, H, W, 3)`` in [0, 1].
        description: the model and guidance that produced them.
    """

    maps: list[torch.Tensor]
    images: torch.Tensor
    description: str


def change_map(clean: torch.Tensor, guided: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, n, V)`` logits before / after VPG -> ``(B, h, w)`` total-variation distance per site.

    ``grid`` is the scale's ``(h, w)`` with ``h * w == n`` (sites in raster order). Bitwise logits
    ``(B, n, d, 2)`` (Infinity) give the mean over the site's ``d`` bits of each bit's distance.
    """
    if grid[0] * grid[1] != clean.shape[1]:
        raise ValueError(f"grid {grid} does not hold the scale's {clean.shape[1]} sites")
    tv = 0.5 * (guided.float().softmax(-1) - clean.float().softmax(-1)).abs().sum(-1)
    if tv.dim() == 3:
        tv = tv.mean(-1)
    return tv.reshape(tv.shape[0], *grid).clamp(0, 1)


def colorize(values: torch.Tensor) -> torch.Tensor:
    """``(...)`` values in [0, 1] -> ``(..., 3)`` RGB through the ramp."""
    pos = values.clamp(0, 1) * (len(_RAMP) - 1)
    low = pos.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (pos - low).unsqueeze(-1)
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def render(guidance: GuidanceMaps, normalize: str = "per scale", cell: int = 128, overlay: float = 0.6) -> torch.Tensor:
    """A strip per sample: one tile per scale, then the image with the summed map blended over it.

    Args:
        normalize: ``"per scale"`` stretches every tile to its own maximum (shows *where*, at each
            scale); ``"shared"`` uses one maximum for all tiles (shows *which scales* VPG acted on).
        cell: tile side in pixels (maps are enlarged with nearest-neighbour, so sites stay visible).
        overlay: opacity of the summed map over the image in the last tile.

    Returns:
        ``(B, cell, cell * (K + 1), 3)`` float32 in [0, 1] (ComfyUI IMAGE).
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"`normalize` must be one of {NORMALIZE}, got {normalize!r}")
    if not guidance.maps:
        raise ValueError("the guidance maps are empty (no scale was sampled)")
    shared_max = max(float(m.max()) for m in guidance.maps)
    tiles, total = [], None
    for m in guidance.maps:
        m = m.float()
        big = F.interpolate(m[:, None], size=(cell, cell), mode="nearest")[:, 0]
        scale = big.flatten(1).amax(1).clamp_min(1e-8)[:, None, None] if normalize == "per scale" else shared_max
        tiles.append(colorize(big / scale if shared_max > 0 else big))
        total = big if total is None else total + big
    peak = total.flatten(1).amax(1).clamp_min(1e-8)[:, None, None]
    heat = colorize(total / peak)
    image = guidance.images.permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(cell, cell), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    alpha = overlay * (total / peak).unsqueeze(-1)
    tiles.append(image * (1 - alpha) + heat * alpha)
    return torch.cat(tiles, dim=2).clamp(0, 1).contiguous()

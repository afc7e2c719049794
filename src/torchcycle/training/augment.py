"""Image augmentation with plain torch ops (no torchvision): a random small affine warp per image."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    max_shift: float = 0.1,
    max_rotation: float = 10.0,
    max_scale: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> torch.Tensor:
    """Shift each image by up to `max_shift` of its size, rotate it by up to `max_rotation` degrees,
    zoom it by a factor within 1 ± `max_scale`, and optionally warp it elastically: a random displacement
    field smoothed by a Gaussian of `elastic_sigma` pixels and scaled by `elastic_alpha` pixels, as in
    Simard et al. (ICDAR 2003), which mimics the wobble of handwriting.

    Border padding repeats the edge pixels, which for digits and most photos is background, so the
    normalised background value is kept (zero padding would not be background after normalisation).
    The random draws come from `generator` (on the CPU) so that resumed runs replay them exactly; the
    zoom and the elastic field are drawn only when enabled, so runs without them replay the same draws.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_rotation)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * max_shift)  # grid coordinates span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    if max_scale > 0:  # the grid maps output to input coordinates, so dividing by the zoom enlarges
        zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * max_scale
        cos, sin = cos / zoom, sin / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    ).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic_alpha > 0:
        grid = grid + elastic_field(x.shape, generator, elastic_alpha, elastic_sigma).to(grid)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def elastic_field(shape: torch.Size, generator: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """Per-image displacement (N, H, W, 2) in grid coordinates: uniform noise in [-1, 1] per pixel and
    axis, smoothed by a separable Gaussian (std `sigma` pixels), scaled to `alpha` pixels."""
    n, _, h, w = shape
    noise = torch.rand(n, 2, h, w, generator=generator) * 2 - 1
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=noise.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    smooth = F.conv2d(noise, kernel.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, radius), groups=2)
    smooth = F.conv2d(smooth, kernel.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(radius, 0), groups=2)
    pixels_to_grid = torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)  # x then y, as affine_grid orders them
    return (alpha * smooth * pixels_to_grid).permute(0, 2, 3, 1)

"""Image augmentation with plain torch ops (no torchvision): a random small affine warp per image."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_affine(
    x: torch.Tensor, generator: torch.Generator, max_shift: float = 0.1, max_rotation: float = 10.0
) -> torch.Tensor:
    """Shift each image by up to `max_shift` of its size and rotate it by up to `max_rotation` degrees.

    Border padding repeats the edge pixels, which for digits and most photos is background, so the
    normalised background value is kept (zero padding would not be background after normalisation).
    The random draws come from `generator` (on the CPU) so that resumed runs replay them exactly.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_rotation)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * max_shift)  # grid coordinates span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    ).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

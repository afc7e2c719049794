"""Inspection hooks: per-layer activation and gradient statistics, to spot dead or exploding layers."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def activation_stats(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Mean, std and share of exact zeros of every leaf module's output on one batch (eval mode,
    so no dropout randomness is consumed and training stays bit-reproducible)."""
    stats: dict[str, float] = {}
    handles = []

    def hook(name: str):
        def record(_module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                o = out.detach().float()
                stats[f"act_mean/{name}"] = float(o.mean())
                stats[f"act_std/{name}"] = float(o.std()) if o.numel() > 1 else 0.0
                stats[f"act_zero_frac/{name}"] = float((o == 0).float().mean())

        return record

    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return stats


def gradient_stats(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's gradient and of the weights themselves (call before zero_grad)."""
    stats: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            stats[f"grad_norm/{name}"] = float(p.grad.detach().float().norm())
            stats[f"weight_norm/{name}"] = float(p.detach().float().norm())
    return stats

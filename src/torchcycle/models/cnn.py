"""The image model: conv blocks (conv, optional batch norm, activation, optional residual block,
max-pool), then a small head."""

from __future__ import annotations

import torch
from torch import nn

from torchcycle.models.layers import activation


class ImageCNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        n_classes: int,
        channels: list[int],
        kernel_size: int = 3,
        hidden: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
        activation_name: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        h, w = image_size
        for _i, c_out in enumerate(channels):
            block = [nn.Conv2d(c_in, c_out, kernel_size, padding="same", bias=not batch_norm)]
            if batch_norm:
                block.append(nn.BatchNorm2d(c_out))
            block.append(activation(activation_name))
            if residual:
                block.append(ResidualConvBlock(c_out, kernel_size, batch_norm, activation_name))
            if min(h, w) >= 2:
                block.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*block))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(c_in * h * w, hidden),
            activation(activation_name),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, n_classes),
        )

    @property
    def last_conv_layer(self) -> str:
        """Name of the last convolution, the default Grad-CAM target."""
        return [n for n, m in self.named_modules() if isinstance(m, nn.Conv2d)][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResidualConvBlock(nn.Module):
    """act(x + BN(conv(act(BN(conv(x)))))): extra depth at one resolution without hurting optimisation."""

    def __init__(self, channels: int, kernel_size: int, batch_norm: bool, activation_name: str) -> None:
        super().__init__()

        def conv_bn() -> list[nn.Module]:
            conv = nn.Conv2d(channels, channels, kernel_size, padding="same", bias=not batch_norm)
            return [conv, nn.BatchNorm2d(channels)] if batch_norm else [conv]

        self.body = nn.Sequential(*conv_bn(), activation(activation_name), *conv_bn())
        self.act = activation(activation_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))

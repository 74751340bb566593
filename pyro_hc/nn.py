"""Network building blocks shared by generative networks (``models``) and encoders (``guides``).

Kept apart from both so that neither has to import the other for a multilayer perceptron.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp", "Flatten"]


def mlp(
    dims: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
    final_activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    """A stack of ``Linear`` layers ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    ``activation`` follows every hidden layer; ``final_activation`` (if any) the last one.
    """
    dims = [int(d) for d in dims]
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ValueError(f"mlp needs at least two positive layer sizes, got {dims}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(activation())
    if final_activation is not None:
        layers.append(final_activation())
    return nn.Sequential(*layers)


class Flatten(nn.Module):
    """Flatten everything but the batch axis (images ``N x C x H x W`` become ``N x CHW``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

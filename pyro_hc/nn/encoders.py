"""Encoders ``x -> z``: the amortised Normal encoder of the variational models, its ``k``-member batched
form (k-DVAE), and DeepECT's deterministic MLP encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.nn import PyroModule
from torch import nn

from .mlp import BatchedLinear, BatchedMLP, mlp

__all__ = ["NormalEncoder", "BatchedEncoder", "MLPEncoder"]


class NormalEncoder(PyroModule):
    """``x -> (loc, scale)`` of a diagonal Normal ``q(z | x)``.

    The trunk ``D -> hidden_dims`` ends in ReLU; two linear heads give the mean and the
    log-variance (VaDE's parameterisation, Jiang et al. 2017, Eq. 11). The log-variance head
    starts at zero weight so that a pretrained trunk is not swamped by random variances.
    """

    def __init__(self, n_features: int, hidden_dims: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError("hidden_dims must name at least one hidden layer")
        self.trunk = mlp([n_features, *hidden_dims], final_activation=nn.ReLU)
        self.loc_head = nn.Linear(hidden_dims[-1], latent_dim)
        self.log_var_head = nn.Linear(hidden_dims[-1], latent_dim)
        nn.init.zeros_(self.log_var_head.weight)
        nn.init.zeros_(self.log_var_head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(x.reshape(x.shape[0], -1))
        loc = self.loc_head(hidden)
        # clamp keeps exp() finite early in training when the head is still far off
        scale = torch.exp(0.5 * self.log_var_head(hidden).clamp(-20.0, 10.0))
        return loc, scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``q(z | x)``: the deterministic embedding used for pretraining and predict."""
        return self.loc_head(self.trunk(x.reshape(x.shape[0], -1)))


class BatchedEncoder(nn.Module):
    """The ``k`` encoders ``x -> (μ_λi(x), σ_λi(x))`` of ``q(z | x, y = i; λ_i)`` in one network.

    Each member mirrors :class:`~pyro_hc.guides.NormalEncoder`: a ReLU trunk ``D -> hidden_dims``,
    then a mean head and a log-variance head (started at zero, so σ = 1 until trained). Outputs
    are ``k x N x latent_dim``.
    """

    def __init__(self, n_members: int, n_features: int, hidden_dims: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError("hidden_dims must name at least one hidden layer")
        self.trunk = BatchedMLP(n_members, [n_features, *hidden_dims], final_activation=True)
        self.loc_head = BatchedLinear(n_members, hidden_dims[-1], latent_dim)
        self.log_var_head = BatchedLinear(n_members, hidden_dims[-1], latent_dim)
        nn.init.zeros_(self.log_var_head.weight)
        nn.init.zeros_(self.log_var_head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member on every datum: ``x`` is ``N x ...`` (flattened), outputs ``k x N x latent_dim``."""
        return self._heads(self.trunk(x.reshape(x.shape[0], -1)))

    def member_rows(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Member ``i`` on its own rows ``packed[i]`` (``k x M x D``, see :class:`~pyro_hc.nn.MemberRows`)."""
        return self._heads(self.trunk(packed))

    def _heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # clamp keeps exp() finite early in training, as in NormalEncoder
        scale = torch.exp(0.5 * self.log_var_head(hidden).clamp(-20.0, 10.0))
        return self.loc_head(hidden), scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``z̄_i = μ_λi(x)`` for every cluster, ``k x N x latent_dim``."""
        return self.loc_head(self.trunk(x.reshape(x.shape[0], -1)))


class MLPEncoder(nn.Module):
    """The feed-forward encoder ``enc``: ``D -> hidden_dims -> latent_dim`` (paper: D-500-500-2000-10)."""

    def __init__(self, n_features: int, hidden_dims: Sequence[int], latent_dim: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = mlp([n_features, *hidden_dims, latent_dim], activation=activation)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``enc(x)``, ``N x latent_dim`` (images are flattened)."""
        return self.net(x.reshape(x.shape[0], -1))

    forward = embed

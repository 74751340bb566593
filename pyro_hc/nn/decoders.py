"""Decoders ``z -> p(x | z)``: the likelihood heads of the generative models, their ``k``-member batched
form (k-DVAE), and DeepECT's squared-error decoder."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from .mlp import BatchedMLP, mlp

__all__ = ["LIKELIHOODS", "Decoder", "BatchedDecoder", "MSEDecoder"]

#: observation models of the decoders
LIKELIHOODS = ("bernoulli", "gaussian")


class Decoder(PyroModule):
    """``z -> p(x | z)``: an MLP ``latent_dim -> hidden_dims -> D`` and the observation noise.

    ``"bernoulli"``: the MLP gives logits; pixel intensities in [0, 1] are scored with the
    Bernoulli log-likelihood (binary cross-entropy), as VaDE and HCRL do for MNIST.
    ``"gaussian"``: the MLP gives the mean; one learned scale per feature.
    """

    def __init__(
        self, latent_dim: int, hidden_dims: Sequence[int], n_features: int, likelihood: str
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        self.likelihood = likelihood
        self.net = mlp([latent_dim, *hidden_dims, n_features])
        if likelihood == "gaussian":
            self.obs_scale = PyroParam(torch.full((n_features,), 0.1), constraints.positive)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (bernoulli) or means (gaussian), shape ``batch_shape + (D,)``."""
        return self.net(z)

    def distribution(self, z: torch.Tensor) -> dist.TorchDistribution:
        """``p(x | z)`` with the feature axis as its event, for ``pyro.sample(..., obs=x)``."""
        out = self(z)
        if self.likelihood == "bernoulli":
            # validate_args off: observations are grey levels in [0, 1], not only {0, 1}
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.obs_scale).to_event(1)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """``E[x | z]`` (decoded images/vectors for plots and reconstructions)."""
        out = self(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def reconstruction_loss(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-datum ``-log p(x | z)`` (BCE or Gaussian NLL), used by autoencoder pretraining."""
        return -self.distribution(z).log_prob(x)


class BatchedDecoder(PyroModule):
    """The ``k`` decoders ``z -> p_θi(x | z)`` in one network.

    ``"bernoulli"``: member ``i`` gives logits (grey levels in [0, 1] scored by the Bernoulli
    log-likelihood, as :class:`Decoder` does); ``"gaussian"``: it gives
    the mean and each cluster learns one scale per feature (``obs_scale``, ``k x D``).

    ``z`` of shape ``N x d`` goes through every decoder; ``k x N x d`` sends ``z[i]`` through decoder
    ``i``. Either way the output is ``k x N x D``.
    """

    def __init__(
        self, n_members: int, latent_dim: int, hidden_dims: Sequence[int], n_features: int, likelihood: str
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        self.likelihood = likelihood
        self.net = BatchedMLP(n_members, [latent_dim, *hidden_dims, n_features])
        if likelihood == "gaussian":
            self.obs_scale = PyroParam(torch.full((n_members, n_features), 0.1), constraints.positive)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def log_prob(self, x_flat: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``log p_θi(x_n | z)`` for decoder outputs ``out`` (``k x N x D``), ``k x N``."""
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).log_prob(x_flat).sum(-1)
        return dist.Normal(out, self.obs_scale.unsqueeze(-2)).log_prob(x_flat).sum(-1)

    def distribution(self, out: torch.Tensor, cluster: torch.Tensor) -> dist.TorchDistribution:
        """``p(x | z, y = cluster)`` from the chosen decoders' outputs, feature axis as the event."""
        if self.likelihood == "bernoulli":
            # validate_args off: observations are grey levels in [0, 1], not only {0, 1}
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.obs_scale[cluster]).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """``E[x | z]`` from decoder outputs."""
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out


class MSEDecoder(nn.Module):
    """The mirrored decoder ``dec``: ``latent_dim -> reversed(hidden_dims) -> D``, linear output.

    ``reduction`` scales the per-datum squared error: ``"sum"`` over the features (Eq. 1 of DeepECT
    read literally) or ``"mean"`` over them (``torch.nn.MSELoss``, as the DeepECT authors' scripts and
    ClustPy train).
    """

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], n_features: int,
                 activation: type[nn.Module] = nn.ReLU, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
        self.net = mlp([latent_dim, *hidden_dims, n_features], activation=activation)
        self.reduction = reduction

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """``dec(z)``, ``N x D``."""
        return self.net(z)

    forward = mean

    def reconstruction_loss(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``‖x − dec(z)‖²₂`` per datum, or that over ``D`` with ``reduction="mean"``; its batch mean is Eq. 1."""
        squared = (self.net(z) - x.reshape(x.shape[0], -1)).square()
        return squared.mean(-1) if self.reduction == "mean" else squared.sum(-1)

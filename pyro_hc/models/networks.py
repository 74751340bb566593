"""Generative-network pieces shared by the models: decoders, observation noise, the data plate."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from ..nn import mlp

__all__ = ["Decoder", "data_plate", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "gaussian")


def data_plate(x: torch.Tensor, index: torch.Tensor | None, num_data: int | None) -> pyro.plate:
    """The one data plate of every model: ``pyro.plate("data", N, subsample=index)``.

    ``index`` holds the mini-batch's positions in the full data set, so Pyro scales the batch's
    log-likelihood by ``N / len(index)``; without it the batch *is* the data.
    """
    if index is None:
        return pyro.plate("data", x.shape[0])
    size = int(num_data) if num_data is not None else x.shape[0]
    return pyro.plate("data", size, subsample=index)


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

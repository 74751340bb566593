"""The plain VAE (Kingma & Welling, ICLR 2014): the density-estimation reference of the HCRL paper."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from ..estimator import ClusterEstimator, as_setting_tuple
from ..nn import Decoder, NormalEncoder
from ..infer import Callback
from ..tree import ClusterTree
from ._plate import data_plate
from .pretrain import AutoencoderPretraining
from ._registry import register_model

__all__ = ["VAE", "VAEModule"]


class VAEModule(PyroModule):
    """``z_n ~ Normal(0, I)``, ``x_n ~ Bernoulli(f_θ(z_n))`` (or Normal); guide ``q(z|x) = Normal(g_φ(x))``.

    It has no clusters: its tree is a root with a single leaf, so that the estimator API, metrics
    and NLL comparisons work the same for it as for the clustering models.
    """

    def __init__(self, n_features: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = NormalEncoder(n_features, hidden_dims, latent_dim)
        self.decoder = Decoder(latent_dim, list(reversed(hidden_dims)), n_features, likelihood)
        self.tree = ClusterTree.flat(1)

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        with data_plate(x, index, num_data):
            prior = dist.Normal(x.new_zeros(self.latent_dim), x.new_ones(self.latent_dim)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.decoder.distribution(z), obs=x.reshape(x.shape[0], -1))

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        with data_plate(x, index, num_data):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def sample_latent_prior(self, num_samples: int) -> torch.Tensor:
        """``z ~ p(z) = Normal(0, I)``, ``S x d`` (the proposal of the prior-sampling likelihood estimate)."""
        return torch.randn(num_samples, self.latent_dim, device=next(self.decoder.parameters()).device)

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        loc, scale = self.encoder(x)
        q_z = dist.Normal(loc, scale).to_event(1)
        z = q_z.rsample((num_samples,))
        log_pz = dist.Normal(torch.zeros_like(z), torch.ones_like(z)).to_event(1).log_prob(z)
        return self.decoder.distribution(z).log_prob(x.reshape(x.shape[0], -1)) + log_pz - q_z.log_prob(z)


@register_model("vae")
class VAE(ClusterEstimator):
    """A plain VAE with the same encoder/decoder shapes as the clustering models.

    Parameters
    ----------
    latent_dim, hidden_dims, likelihood:
        Encoder ``D-hidden_dims-latent_dim``, decoder its mirror; likelihood from the data if None.
    epochs, batch_size, lr, lr_decay, lr_decay_every:
        SVI with Adam and a step learning-rate schedule.
    pretrain_epochs, pretrain_lr:
        Epochs of autoencoder pretraining of the encoder mean and the decoder before the VAE epochs
        (default 0: none). HCRL's Table 1 compares every model after the same pretraining, so
        ``benchmarks/hcrl_mnist.py`` gives the VAE the mixture models' ``pretrain_epochs``.
    """

    def __init__(
        self,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        likelihood: str | None = None,
        epochs: int = 100,
        batch_size: int = 100,
        lr: float = 1e-3,
        lr_decay: float = 0.9,
        lr_decay_every: int = 10,
        pretrain_epochs: int = 0,
        pretrain_lr: float = 1e-3,
    ) -> None:
        self.latent_dim = latent_dim
        self.hidden_dims = as_setting_tuple(hidden_dims)
        self.likelihood = likelihood
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr

    def _build_module(self) -> VAEModule:
        spec = self.data_spec_
        return VAEModule(spec.n_features, self.latent_dim, self.hidden_dims, spec.likelihood)

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        if self.pretrain_epochs > 0:
            self._run(AutoencoderPretraining(self.module_.encoder, self.module_.decoder), x, phase="pretrain",
                      epochs=self.pretrain_epochs, batch_size=batch_size, seed=seed, progress=progress,
                      lr=self.pretrain_lr)
        self._run(self.module_, x, phase="train", epochs=epochs, batch_size=batch_size, seed=seed,
                  progress=progress, callbacks=callbacks, lr=self.lr, lr_decay=self.lr_decay,
                  lr_decay_every=self.lr_decay_every)

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.encoder.embed(x)

"""VaDE: Variational Deep Embedding (Jiang, Zheng, Tan, Tang & Zhou, IJCAI 2017).

A VAE whose prior is a Gaussian mixture; the flat Bayesian baseline of the HCRL paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from pyro.nn import PyroModule, PyroParam
from sklearn.mixture import GaussianMixture
from torch.distributions import constraints

from ..estimator import ClusterEstimator, as_setting_tuple
from ..guides import NormalEncoder
from ..infer import Callback
from ..tree import ClusterTree
from ._registry import register_model
from .networks import Decoder, data_plate
from .pretrain import AutoencoderPretraining

__all__ = ["VaDE", "VaDEModule"]


class VaDEModule(PyroModule):
    """VaDE's generative model and amortised guide.

    Generative story, for each datum n (Jiang et al. 2017, Eqs. 1–3)::

        c_n ~ Categorical(π)                      # cluster, summed out by TraceEnum_ELBO
        z_n ~ Normal(μ_{c_n}, diag σ²_{c_n})      # embedding
        x_n ~ Bernoulli(sigmoid(f_θ(z_n)))        # or Normal(f_θ(z_n), diag s²) for "gaussian" data

    Guide: ``q(z_n | x_n) = Normal(g_φ(x_n))``. With ``c`` enumerated in the model the ELBO is
    ``E_q[log p(x|z) + log Σ_c π_c N(z; μ_c, σ_c²) − log q(z|x)]``, which bounds ``log p(x)`` at
    least as tightly as the paper's mean-field ``q(c|x) q(z|x)`` with ``q(c|x) = p(c|z)`` (Eq. 16).
    """

    def __init__(
        self, n_features: int, n_clusters: int, latent_dim: int, hidden_dims: Sequence[int], likelihood: str
    ) -> None:
        super().__init__()
        self.encoder = NormalEncoder(n_features, hidden_dims, latent_dim)
        self.decoder = Decoder(latent_dim, list(reversed(hidden_dims)), n_features, likelihood)
        self.mixture_logits = PyroParam(torch.zeros(n_clusters))
        self.cluster_locs = PyroParam(torch.randn(n_clusters, latent_dim))
        self.cluster_scales = PyroParam(torch.ones(n_clusters, latent_dim), constraints.positive)
        self.tree = ClusterTree.flat(n_clusters)

    @config_enumerate
    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        mixture_weights = torch.softmax(self.mixture_logits, -1)
        with data_plate(x, index, num_data):
            cluster = pyro.sample("cluster", dist.Categorical(mixture_weights))  # Eq. 1
            z = pyro.sample("z", dist.Normal(self.cluster_locs[cluster], self.cluster_scales[cluster]).to_event(1))  # Eq. 2
            pyro.sample("x", self.decoder.distribution(z), obs=x.reshape(x.shape[0], -1))  # Eq. 3

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        with data_plate(x, index, num_data):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def log_prior_density(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z) = log Σ_c π_c N(z; μ_c, σ_c²)``, the mixture prior with c summed out."""
        log_weights = torch.log_softmax(self.mixture_logits, -1)
        log_lik = dist.Normal(self.cluster_locs, self.cluster_scales).log_prob(z.unsqueeze(-2)).sum(-1)
        return torch.logsumexp(log_weights + log_lik, -1)

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``log p(x, z_s) − log q(z_s | x)`` for ``num_samples`` draws, ``S x B``."""
        loc, scale = self.encoder(x)
        q_z = dist.Normal(loc, scale).to_event(1)
        z = q_z.rsample((num_samples,))
        x_flat = x.reshape(x.shape[0], -1)
        return self.decoder.distribution(z).log_prob(x_flat) + self.log_prior_density(z) - q_z.log_prob(z)

    def cluster_log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(c | z)`` for every cluster, ``N x K`` (the paper's γ, Eq. 16)."""
        log_weights = torch.log_softmax(self.mixture_logits, -1)
        log_lik = dist.Normal(self.cluster_locs, self.cluster_scales).log_prob(z.unsqueeze(-2)).sum(-1)
        return torch.log_softmax(log_weights + log_lik, -1)


@register_model("vade")
class VaDE(ClusterEstimator):
    """Variational Deep Embedding with the paper's recipe.

    1. Pretrain the encoder mean and the decoder as an autoencoder (``pretrain_epochs``).
    2. Fit a diagonal Gaussian mixture to the embeddings; it initialises π, μ_c, σ_c.
    3. Maximise the ELBO by SVI (``epochs``), Adam with the learning rate decayed by
       ``lr_decay`` every ``lr_decay_every`` epochs (paper: 0.002, 0.9 every 10 epochs).

    Parameters
    ----------
    n_clusters:
        Number of mixture components (leaves of the flat tree).
    latent_dim, hidden_dims:
        The encoder is ``D-hidden_dims-latent_dim`` and the decoder its mirror
        (paper: D-500-500-2000-10).
    likelihood:
        ``"bernoulli"`` or ``"gaussian"``; ``None`` takes the data set's.
    epochs, batch_size, lr, lr_decay, lr_decay_every:
        Main SVI phase (``fit`` arguments override ``epochs`` and ``batch_size``).
    pretrain_epochs, pretrain_lr:
        Autoencoder pretraining; ``pretrain_epochs=0`` skips it (the mixture is then fitted to
        the untrained encoder's embedding).
    """

    loss = "trace_enum"

    def __init__(
        self,
        n_clusters: int = 10,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        likelihood: str | None = None,
        epochs: int = 150,
        batch_size: int = 100,
        lr: float = 2e-3,
        lr_decay: float = 0.9,
        lr_decay_every: int = 10,
        pretrain_epochs: int = 50,
        pretrain_lr: float = 1e-3,
    ) -> None:
        self.n_clusters = n_clusters
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

    def _check_config(self, x: torch.Tensor) -> None:
        if self.n_clusters < 1 or self.latent_dim < 1:
            raise ValueError(f"n_clusters and latent_dim must be >= 1, got {self.n_clusters}, {self.latent_dim}")
        if self.n_clusters > x.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of data points ({x.shape[0]})")
        if self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")

    def _build_module(self) -> VaDEModule:
        spec = self.data_spec_
        return VaDEModule(spec.n_features, self.n_clusters, self.latent_dim, self.hidden_dims, spec.likelihood)

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        if self.pretrain_epochs > 0:
            autoencoder = AutoencoderPretraining(module.encoder, module.decoder)
            self._run(autoencoder, x, phase="pretrain", epochs=self.pretrain_epochs, batch_size=batch_size,
                      seed=seed, progress=progress, lr=self.pretrain_lr)
        self._init_mixture(x, seed)
        self._run(module, x, phase="train", loss=self.loss, epochs=epochs, batch_size=batch_size, seed=seed,
                  progress=progress, callbacks=callbacks, lr=self.lr, lr_decay=self.lr_decay,
                  lr_decay_every=self.lr_decay_every)

    @torch.no_grad()
    def _init_mixture(self, x: torch.Tensor, seed: int | None) -> None:
        """Fit a diagonal GMM to the pretrained embedding (the paper's initialisation of π, μ, σ)."""
        module = self.module_
        embedding = self._batched(module.encoder.embed, x).double().numpy()
        gmm = GaussianMixture(self.n_clusters, covariance_type="diag", n_init=10, reg_covar=1e-4,
                              random_state=seed).fit(embedding)
        device = self.device_
        module.mixture_logits_unconstrained.copy_(torch.as_tensor(np.log(gmm.weights_), device=device))
        module.cluster_locs_unconstrained.copy_(torch.as_tensor(gmm.means_, device=device))
        module.cluster_scales_unconstrained.copy_(torch.as_tensor(np.log(np.sqrt(gmm.covariances_)), device=device))

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module_
        return module.cluster_log_posterior(module.encoder.embed(x))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.encoder.embed(x)

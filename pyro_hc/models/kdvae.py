"""k-DVAE: a mixture of variational autoencoders for deep clustering, with the k-DAE ablation.

Paper: "A mixture of variational autoencoders for deep clustering" (k-DVAE, ICLR 2021 submission);
the ablation k-DAE is Opochinsky, Chazan, Gannot & Goldberger, "K-autoencoders deep clustering"
(ICASSP 2020). Equation numbers below are the k-DVAE paper's.

Every cluster ``i`` owns an encoder ``λ_i`` and a decoder ``θ_i``; the cluster only chooses which
decoder generates ``x``. The ``k`` encoders (and the ``k`` decoders) are one batched network:
stacked weights ``k x in x out`` and one ``torch.baddbmm`` per layer
(:class:`~pyro_hc.nn.BatchedEncoder`, :class:`~pyro_hc.nn.BatchedDecoder`), never a Python loop over clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from sklearn.cluster import KMeans
from torch import nn

from ..baselines import initial_clusters_check
from ..estimator import ClusterEstimator, NotFittedError, as_setting_tuple
from ..infer import Callback, local_params
from ..nn import BatchedDecoder, BatchedEncoder, MemberRows
from ..tree import ClusterTree
from ._plate import data_plate
from ._registry import register_model
from .vade import ClusterMonitor, VaDE, cluster_scores

__all__ = [
    "KDVAE", "KDAE", "KDVAEModule", "KL_ESTIMATORS",
    "KAutoencoderObjective", "ClusterWarmup", "OBJECTIVES",
]

OBJECTIVES = ("hard", "soft")
#: how Eq. 6's KL(q(z | x, y = i) ‖ N(0, I)) is computed
KL_ESTIMATORS = ("analytic", "monte_carlo")


# the model/guide pair -------------------------------------------------------------------------


class KDVAEModule(PyroModule):
    """k-DVAE's generative model and guide; ``objective`` picks the soft (Eq. 1) or hard (Eq. 6) ELBO.

    Generative story, for each datum n (Sec. 3.1)::

        y_n ~ Categorical(α)                    # cluster (step 1)
        z_n ~ Normal(0, I)                      # latent, independent of y (step 2)
        x_n ~ p_θ_{y_n}(x | z_n)                # decoder y_n: Bernoulli logits or Normal (step 3)

    Guide (Sec. 3.2): ``q(y, z | x) = q(y | x) q(z | x, y = i; λ_i)`` with one encoder per cluster.
    It first draws ``z_i ~ q(z | x, y = i)`` for *every* cluster by reparameterisation and scores
    the per-cluster single-sample ELBOs (Algorithm 1)::

        L_i(x) = log p_θi(x | z_i) + log N(z_i; 0, I) − log q(z_i | x, y = i)

    with ``kl="monte_carlo"`` (Pyro's standard single-sample estimator of the KL), and

        L_i(x) = log p_θi(x | z_i) − KL(q(z | x, y = i) ‖ N(0, I))     # Eq. 6

    with ``kl="analytic"`` (the default, as Eqs. 4–6 write it): the closed-form Gaussian KL, so the
    arg-max over clusters (Eq. 5) is not perturbed by the noise of a one-sample KL. In the model/guide
    pair the analytic KL enters through the guide's ``z`` site: its ``log_density`` is
    ``log N(z_y; 0, I) + KL_y``, whose expectation under ``q`` is ``E_q[log q(z | x, y)]``; in the
    ELBO the model's ``log N(z_y; 0, I)`` cancels it exactly, leaving ``log p(x | z_y) − KL_y``.

    ``objective="soft"`` — the full ELBO of Eq. 1. ``q(y | x)`` is defined as the posterior over
    clusters given the drawn latents, ``q(y = i | x) ∝ α_i exp L_i(x)``; it is the maximiser of
    Eq. 1 over ``q(y | x)`` for these draws, and with it Eq. 1 equals
    ``logsumexp_i(log α_i + L_i(x))``. That is still a lower bound on ``log p(x)`` (Jensen's
    inequality over the independent ``z_i``; it is the one-sample-per-cluster stratified importance
    bound), at least as tight in expectation as Eq. 1 with any ``q(y | x)`` that ignores the draws,
    and it needs no extra network: the paper leaves ``q(y | x)`` unspecified beyond replacing it by
    a hard choice (Eq. 5). ``y`` is enumerated in the guide (``infer={"enumerate": "parallel"}``), so
    ``TraceEnum_ELBO`` sums Eq. 1 over the clusters exactly.

    ``objective="hard"`` — Eq. 6, ``max_i L_i(x)``, as an ELBO of the *same* model/guide: the guide
    sets ``q(y | x)`` to a point mass on ``argmax_i L_i(x)`` (Eq. 5), whose entropy is zero, and the
    model masks ``log p(y)`` because Eq. 6 neglects ``KL(q(y | x) ‖ p(y))``. No ``pyro.factor`` is
    needed; gradients reach only the winning cluster's networks, as in the paper.

    In both cases the guide's ``z`` site is ``Delta(z_y, log_density = log q(z_y | x, y))`` with the
    pre-drawn, reparameterised ``z_y``, so that the ``z`` scored inside ``q(y | x)`` and the ``z``
    the model sees are the same draw. The decoder outputs the guide computed for ``q(y | x)`` are
    handed to the model (keyed on the identity of that ``z`` value) rather than recomputed.

    ``winners_only=True`` (the default) computes the hard objective as the paper trains it but
    cheaper: the arg-max of Eq. 5 is taken from every cluster's ELBO without gradients, then only
    each datum's winning encoder and decoder run again with gradients, on the same draw of ``z``
    (the data packed by cluster, :class:`~pyro_hc.nn.MemberRows`). Loss and gradients are those of
    the dense computation (the losers' gradients are zero either way) at less of its cost on a CPU
    (measured, ``k = 10``, batch 100, MNIST sizes, balanced clusters, one thread: 0.092 s for the dense
    forward and backward against 0.034 s for the arg-max pass + 0.029 s for the winners' step, about
    1.4x per training step with Adam's). The packed shapes change from step to step, so CUDA graph capture needs
    ``winners_only=False``; the estimator chooses that when it is asked for graphs. The k-DAE
    objective and the warm-up use the same layout.
    """

    #: the packed layout's shapes depend on the data (see ``winners_only``)
    @property
    def cuda_graph_safe(self) -> bool:
        return not (self.winners_only and self.objective == "hard")

    def __init__(
        self,
        n_features: int,
        n_clusters: int,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 100),
        likelihood: str = "bernoulli",
        objective: str = "hard",
        kl: str = "analytic",
        winners_only: bool = True,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if kl not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl {kl!r}; choose one of {KL_ESTIMATORS}")
        if n_clusters < 1 or latent_dim < 1:
            raise ValueError(f"n_clusters and latent_dim must be >= 1, got {n_clusters}, {latent_dim}")
        self.n_clusters = int(n_clusters)
        self.latent_dim = int(latent_dim)
        self.objective = objective
        self.kl = kl
        self.winners_only = bool(winners_only)
        # D-500-100-10 encoders and 10-100-500-D decoders per cluster by default (Sec. 4.2)
        self.encoders = BatchedEncoder(n_clusters, n_features, hidden_dims, latent_dim)
        self.decoders = BatchedDecoder(n_clusters, latent_dim, list(reversed(hidden_dims)), n_features, likelihood)
        self.mixture_logits = PyroParam(torch.zeros(n_clusters))
        self.tree = ClusterTree.flat(n_clusters)
        self._handoff: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def log_weights(self) -> torch.Tensor:
        """``log α``."""
        return torch.log_softmax(self.mixture_logits, -1)

    def _log_prior_z(self, z: torch.Tensor) -> torch.Tensor:
        return dist.Normal(torch.zeros_like(z), torch.ones_like(z)).to_event(1).log_prob(z)

    def cluster_elbos(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Algorithm 1 for every cluster at once: draws and single-sample ELBOs.

        Returns ``z`` (``k x N x d``, ``z_i ~ q(z | x, y = i)`` reparameterised), the guide's log-density
        for each draw (``k x N``: ``log q(z_i | x, y = i)``, or ``log N(z_i; 0, I) + KL_i`` with the
        analytic KL, see the class docstring), the decoder outputs ``θ_i(z_i)`` (``k x N x D``) and
        ``L_i(x)`` (``k x N``).
        """
        x_flat = x.reshape(x.shape[0], -1)
        loc, scale = self.encoders(x_flat)
        z = dist.Normal(loc, scale).rsample()  # reparameterisation (Sec. 3.2)
        out = self.decoders(z)
        guide_log_density, elbos = self._elbo_terms(x_flat, loc, scale, z, out)
        return z, guide_log_density, out, elbos

    def _elbo_terms(self, x_flat, loc, scale, z, out) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's log-density of ``z`` and ``L_i(x)`` from encoder and decoder outputs (any batch shape)."""
        log_lik = self.decoders.log_prob(x_flat, out)
        log_prior = self._log_prior_z(z)
        if self.kl == "analytic":
            kl = 0.5 * (loc.square() + scale.square() - 1.0).sum(-1) - torch.log(scale).sum(-1)
            return log_prior + kl, log_lik - kl  # Eq. 6, per cluster
        log_q = dist.Normal(loc, scale).to_event(1).log_prob(z)
        return log_q, log_lik + log_prior - log_q  # Eq. 6 with a one-sample KL

    def assigned_elbos(self, x_flat: torch.Tensor, cluster: torch.Tensor, noise: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Algorithm 1 for each datum's ``cluster`` only: ``z``, guide log-density, decoder output, ``L``.

        ``noise`` (``k x N x d`` standard normal) fixes the draw, ``z = μ + σ ε`` with
        ``ε = noise[cluster[n], n]``, so these are the entries ``[cluster[n], n]`` of
        :meth:`cluster_elbos` on that draw; only the assigned networks run (``winners_only``).
        """
        rows = MemberRows(cluster, self.n_clusters)
        x_rows = rows.pack(x_flat)
        loc, scale = self.encoders.member_rows(x_rows)
        z = loc + rows.pack(noise[cluster, torch.arange(x_flat.shape[0], device=x_flat.device)]) * scale
        out = self.decoders(z)
        guide_log_density, elbos = self._elbo_terms(x_rows, loc, scale, z, out)
        return rows.unpack(z), rows.unpack(guide_log_density), rows.unpack(out), rows.unpack(elbos)

    def winning_elbos(self, x_flat: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 5's arg-max over every cluster (no gradients), then :meth:`assigned_elbos` on the winners.

        Returns the winners ``best`` (``N``) and their ``z``, guide log-density, decoder output and
        ``L`` (Eq. 6), on the one draw of ``z`` both passes share.
        """
        with torch.no_grad():
            loc, scale = self.encoders(x_flat)
            # the draw cluster_elbos would make: Normal(loc, scale).rsample() is loc + ε σ, ε drawn so
            noise = torch.empty_like(loc).normal_()
            z = loc + noise * scale
            best = self._elbo_terms(x_flat, loc, scale, z, self.decoders(z))[1].argmax(0)  # Eq. 5
        return (best, *self.assigned_elbos(x_flat, best, noise))

    def assigned_log_likelihoods(self, x_flat: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        """``log p_θi(x_n | z̄_i)`` with ``i = cluster[n]``, ``N``: the k-DAE term, assigned networks only."""
        rows = MemberRows(cluster, self.n_clusters)
        x_rows = rows.pack(x_flat)
        return rows.unpack(self.decoders.log_prob(x_rows, self.decoders(self.encoders.member_rows(x_rows)[0])))

    @torch.no_grad()
    def assignment_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 8 score of every cluster, ``N x k``: ``log p_θi(x | z̄_i) − ½‖z̄_i‖² + Σ_s log σ̄_is``.

        Deterministic (``z̄_i = μ_λi(x)``, Algorithm 2); it is Eq. 7's
        ``log p_θi(x | z̄_i) + log N(z̄_i; 0, I) − log q(z̄_i | x, y = i)``, the constants cancelling.
        """
        x_flat = x.reshape(x.shape[0], -1)
        loc, scale = self.encoders(x_flat)
        log_lik = self.decoders.log_prob(x_flat, self.decoders(loc))
        return (log_lik - 0.5 * loc.pow(2).sum(-1) + torch.log(scale).sum(-1)).t()  # Eq. 8

    @torch.no_grad()
    def reconstruction_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``log p_θi(x | z̄_i)`` of every cluster's autoencoder, ``N x k`` (the k-DAE assignment)."""
        x_flat = x.reshape(x.shape[0], -1)
        return self.decoders.log_prob(x_flat, self.decoders(self.encoders.embed(x_flat))).t()

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        x_flat = x.reshape(x.shape[0], -1)
        with data_plate(x, index, num_data):
            prior_y = dist.Categorical(logits=self.mixture_logits)
            if self.objective == "hard":
                prior_y = prior_y.mask(False)  # Eq. 6 neglects KL(q(y|x) ‖ p(y))
            y = pyro.sample("y", prior_y)  # step 1
            prior_z = dist.Normal(x_flat.new_zeros(self.latent_dim), x_flat.new_ones(self.latent_dim)).to_event(1)
            z = pyro.sample("z", prior_z)  # step 2: z ~ N(0, I), independent of y
            handoff, self._handoff = self._handoff, None
            if handoff is not None and handoff[0] is z:
                out = handoff[1]  # the guide already decoded this very z
            else:
                # z is N x d (one z per datum, every decoder applied) or k x N x d (z_i for decoder i)
                out = self.decoders(z)[y, torch.arange(x_flat.shape[0], device=x_flat.device)]
            pyro.sample("x", self.decoders.distribution(out, y), obs=x_flat)  # step 3 (a)/(b)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        with data_plate(x, index, num_data):
            if self.objective == "hard":
                # Eq. 5: q(y | x) is a point mass on the best cluster, so Eq. 1 becomes the max of Eq. 6
                if self.winners_only:
                    best, z_best, log_density, out, _ = self.winning_elbos(x.reshape(x.shape[0], -1))
                else:
                    z_all, guide_log_density, out_all, elbos = self.cluster_elbos(x)  # Algorithm 1
                    best = elbos.detach().argmax(0)
                    rows = torch.arange(x.shape[0], device=x.device)
                    z_best, log_density, out = z_all[best, rows], guide_log_density[best, rows], out_all[best, rows]
                point_mass = nn.functional.one_hot(best, self.n_clusters).to(log_density.dtype)
                pyro.sample("y", dist.Categorical(probs=point_mass))
                z = pyro.sample("z", dist.Delta(z_best, log_density=log_density, event_dim=1))
                self._handoff = (z, out)
                return
            z_all, guide_log_density, out_all, elbos = self.cluster_elbos(x)  # Algorithm 1
            # q(y = i | x) ∝ α_i exp L_i(x): Eq. 1 then equals logsumexp_i(log α_i + L_i)
            logits = (self.log_weights.unsqueeze(-1) + elbos).t()
            y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            rows = torch.arange(x.shape[0], device=x.device)
            z = pyro.sample("z", dist.Delta(z_all[y, rows], log_density=guide_log_density[y, rows],
                                             event_dim=1))
            self._handoff = (z, out_all[y, rows])

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``S x N`` weights whose ``logsumexp_s − log S`` estimates ``log p(x) = log Σ_i α_i p_i(x)``.

        Stratified over the clusters: ``log Σ_i α_i p_θi(x, z_is) / q(z_is | x, y = i)`` with one draw
        ``z_is ~ q(z | x, y = i)`` per cluster and sample, so each ``p_i(x)`` is estimated unbiasedly.
        The samples are drawn one batched ``k x N`` pass at a time to bound memory.
        """
        x_flat = x.reshape(x.shape[0], -1)
        loc, scale = self.encoders(x_flat)
        q_z = dist.Normal(loc, scale).to_event(1)
        log_weights = self.log_weights.unsqueeze(-1)
        draws = []
        for _ in range(num_samples):
            z = q_z.rsample()  # k x N x d
            log_w = self.decoders.log_prob(x_flat, self.decoders(z)) + self._log_prior_z(z) - q_z.log_prob(z)
            draws.append(torch.logsumexp(log_weights + log_w, 0))
        return torch.stack(draws)


# module losses (pyro.factor with an empty guide, as in pretrain.py) ----------------------------
#
# They are plain ``nn.Module`` wrappers, not ``PyroModule``s: attaching a ``PyroModule`` re-parents
# its Pyro context and Pyro refuses that once it has run, while the same ``KDVAEModule`` is wrapped
# by the warm-up and then (k-DAE) by the main objective. Its parameters stay its own either way.


class KAutoencoderObjective(nn.Module):
    """The k-DAE objective (Opochinsky et al. 2020): ``k`` plain autoencoders, reconstruction only.

    ``max_i log p_θi(x | z̄_i)`` with ``z̄_i = μ_λi(x)``: the autoencoder that reconstructs a datum
    best wins it and alone learns from it. There is no latent random variable, so the loss enters
    through ``pyro.factor`` with an empty guide.
    """

    def __init__(self, module: KDVAEModule) -> None:
        super().__init__()
        self.module = module

    @property
    def cuda_graph_safe(self) -> bool:
        return not self.module.winners_only

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        x_flat = x.reshape(x.shape[0], -1)
        module = self.module
        with data_plate(x, index, num_data):
            if module.winners_only:  # the arg-max without gradients, then the winners' networks alone
                best = module.reconstruction_scores(x_flat).argmax(-1)
                log_lik = module.assigned_log_likelihoods(x_flat, best)
            else:
                log_lik = module.decoders.log_prob(x_flat, module.decoders(module.encoders.embed(x_flat))).max(0).values
            pyro.factor("reconstruction", log_lik)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: the autoencoders have no latent random variables."""


class ClusterWarmup(nn.Module):
    """Warm each autoencoder up on its initial cluster: datum ``n`` trains only network ``labels[n]``.

    ``variational=True`` (k-DVAE): the cluster's single-sample ELBO ``L_{labels[n]}(x_n)``;
    ``False`` (k-DAE): its reconstruction log-likelihood ``log p(x_n | z̄)``. With the module's
    ``winners_only`` only the assigned networks run (the data packed by cluster); otherwise all
    ``k`` run as one batched computation and the assigned cluster's term is picked out.
    """

    def __init__(self, module: KDVAEModule, labels: torch.Tensor, variational: bool = True) -> None:
        super().__init__()
        self.module = module
        self.variational = variational
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long))

    @property
    def cuda_graph_safe(self) -> bool:
        return not self.module.winners_only

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        x_flat = x.reshape(x.shape[0], -1)
        module = self.module
        labels = self.labels if index is None else self.labels[index]
        rows = torch.arange(x_flat.shape[0], device=x_flat.device)
        with data_plate(x, index, num_data):
            if module.winners_only and self.variational:
                noise = x_flat.new_empty(module.n_clusters, x_flat.shape[0], module.latent_dim).normal_()
                score = module.assigned_elbos(x_flat, labels, noise)[3]
            elif module.winners_only:
                score = module.assigned_log_likelihoods(x_flat, labels)
            elif self.variational:
                score = module.cluster_elbos(x_flat)[3][labels, rows]
            else:
                score = module.decoders.log_prob(x_flat, module.decoders(module.encoders.embed(x_flat)))[labels, rows]
            pyro.factor("warmup", score)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: the warm-up is a module loss."""


# estimators -----------------------------------------------------------------------------------


@register_model("kdvae")
class KDVAE(ClusterEstimator):
    """k-DVAE: ``k`` variational autoencoders competing for the data (Eqs. 1–8).

    The paper's recipe:

    1. Pretrain VaDE (:class:`~pyro_hc.models.vade.VaDE`, its own D-500-500-2000-10 networks by
       default) for ``vade_pretrain_epochs`` autoencoder + ``vade_epochs`` ELBO epochs, and run
       k-means (``n_init=10``) in its embedding for the initial clusters (Sec. 4.2). With both
       budgets at 0 VaDE is skipped and k-means runs on the raw inputs. ``init_from`` (a fitted
       :class:`~pyro_hc.models.vade.VaDE` or the file it was saved to) skips the VaDE training and
       runs k-means in that VaDE's embedding, its parameters used as they are: one good VaDE
       (e.g. chosen by its label-free initialisation selection) serves every variant.
    2. Warm each of the ``k`` autoencoders up on its initial cluster (``warmup_epochs``).
    3. Maximise the ``objective`` ("hard": Eq. 6; "soft": Eq. 1 with ``y`` enumerated) by SVI
       (``epochs``), Adam with the learning rate multiplied by ``lr_decay`` every ``lr_decay_every``
       epochs.

    ``predict`` is the hard clustering of Eq. 8 (deterministic: encoder means); ``predict_proba``
    is the soft posterior ``q(y = i | x) ∝ α_i exp(Eq. 8 score_i)``, the training-time ``q(y | x)``
    with each ``z_i`` replaced by its mean. ``α`` is learned by the soft objective only (Eq. 6
    drops it), so under the hard objective it stays uniform and ``predict`` is exactly Eq. 8.

    Parameters
    ----------
    n_clusters:
        ``k``: clusters, autoencoders and leaves of the flat tree.
    objective:
        ``"hard"`` (Eq. 6, the paper's) or ``"soft"`` (Eq. 1).
    kl:
        ``"analytic"`` (the closed-form Gaussian KL of Eqs. 4–6, the default) or ``"monte_carlo"``
        (a one-sample estimate, which adds noise to the arg-max over clusters). Measured on digits
        with the quality test's budget (CPU, 1 thread): ACC / NMI 0.819 / 0.828 analytic against
        0.792 / 0.785 Monte Carlo at seed 0, 0.776 / 0.764 against 0.752 / 0.760 at seed 1.
    latent_dim, hidden_dims:
        Each encoder is ``D-hidden_dims-latent_dim`` and each decoder its mirror
        (paper: D-500-100-10).
    likelihood:
        ``"bernoulli"`` or ``"gaussian"``; ``None`` takes the data set's.
    epochs, batch_size, lr, lr_decay, lr_decay_every:
        Main SVI phase (``fit`` arguments override ``epochs`` and ``batch_size``).
    warmup_epochs, warmup_lr:
        Per-cluster warm-up; 0 skips it.
    vade_epochs, vade_pretrain_epochs, vade_hidden_dims, vade_lr:
        Budget, networks and learning rate of the VaDE used for the initial clusters. ``vade_lr``
        is below VaDE's own 2e-3 because the budget is short: on digits, 10 ELBO epochs at 2e-3
        after 10 pretraining epochs take k-means in the embedding from ACC 0.75 to 0.64, while
        20 at 5e-4 after 20 take it from 0.79 to 0.81. This VaDE fits the paper's single GMM
        (``init_candidates=1``); for a start chosen among candidates, fit a VaDE with its
        selection and pass it as ``init_from``. All four are unused with ``init_from``.
    init_from:
        ``None`` (train a VaDE as above), a fitted VaDE, or the path of a saved one. A VaDE object
        is used, never changed; :meth:`save` records a path but not an object (it is not saved).

    Besides the shared fitted attributes, ``fit`` leaves ``vade_`` (the initialising VaDE, or None)
    and ``init_labels_`` (the k-means clusters, ``N`` labels); they are not saved by :meth:`save`.
    ``history_`` holds the VaDE's epochs (phases ``vade_*``, copied from ``init_from``'s too), one
    ``"init"`` record (``loss``: the k-means inertia per datum) and the warm-up and main epochs;
    with ``fit(..., monitor_labels=y)`` the ``"init"`` record has the starting clusters' ``acc`` /
    ``nmi`` and the VaDE's own (``vade_acc`` / ``vade_nmi``), and the main phase logs ``acc`` /
    ``nmi`` every ``lr_decay_every`` epochs and at its end.
    :meth:`transform` gives each datum's ``z̄`` in the latent space of its assigned cluster, and
    :meth:`sample` draws new data from one cluster's decoder.
    """

    #: k-DVAE trains variational autoencoders; the k-DAE ablation sets this to False
    variational = True

    @property
    def loss(self) -> str:
        """``"trace_enum"`` for the soft objective (``y`` enumerated in the guide), else ``"trace"``."""
        return "trace_enum" if self.variational and self.objective == "soft" else "trace"

    def __init__(
        self,
        n_clusters: int = 10,
        objective: str = "hard",
        kl: str = "analytic",
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 100),
        likelihood: str | None = None,
        epochs: int = 100,
        batch_size: int = 100,
        lr: float = 1e-3,
        lr_decay: float = 0.9,
        lr_decay_every: int = 10,
        warmup_epochs: int = 20,
        warmup_lr: float = 1e-3,
        vade_epochs: int = 30,
        vade_pretrain_epochs: int = 20,
        vade_hidden_dims: Sequence[int] = (500, 500, 2000),
        vade_lr: float = 5e-4,
        init_from: str | Path | VaDE | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.objective = objective
        self.kl = kl
        self.latent_dim = latent_dim
        self.hidden_dims = as_setting_tuple(hidden_dims)
        self.likelihood = likelihood
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.vade_epochs = vade_epochs
        self.vade_pretrain_epochs = vade_pretrain_epochs
        self.vade_hidden_dims = as_setting_tuple(vade_hidden_dims)
        self.vade_lr = vade_lr
        self.init_from = init_from

    def _check_config(self, x: torch.Tensor) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.kl not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl {self.kl!r}; choose one of {KL_ESTIMATORS}")
        if self.n_clusters < 1 or self.latent_dim < 1:
            raise ValueError(f"n_clusters and latent_dim must be >= 1, got {self.n_clusters}, {self.latent_dim}")
        if self.n_clusters > x.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of data points ({x.shape[0]})")
        budgets = {"warmup_epochs": self.warmup_epochs, "vade_epochs": self.vade_epochs,
                   "vade_pretrain_epochs": self.vade_pretrain_epochs}
        for name, value in budgets.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.init_from is not None and not isinstance(self.init_from, (str, Path, VaDE)):
            raise ValueError(f"init_from must be a fitted VaDE or the path of a saved one, "
                             f"got {type(self.init_from).__name__}")

    def _initialising_vade(self) -> VaDE:
        """``init_from`` as a fitted VaDE (loaded from its file if a path)."""
        vade = self.init_from
        if isinstance(vade, (str, Path)):
            from ._registry import load

            if not Path(vade).is_file():
                raise ValueError(f"init_from={str(vade)!r} is not a file")
            vade = load(vade, device=self.device_)
            if not isinstance(vade, VaDE):
                raise ValueError(f"init_from={str(self.init_from)!r} holds a {type(vade).__name__}, not a VaDE")
        if not hasattr(vade, "module_"):
            raise NotFittedError("init_from is an unfitted VaDE; fit it (or pass the file it was saved to) first")
        if vade.data_spec_.n_features != self.data_spec_.n_features:
            raise ValueError(f"init_from's VaDE was fitted to data with {vade.data_spec_.n_features} features, "
                             f"these have {self.data_spec_.n_features}")
        return vade

    def _checkpoint_header(self) -> dict[str, Any]:
        """The shared header; a VaDE object in ``init_from`` is not saved (a path is)."""
        header = super()._checkpoint_header()
        init_from = header["config"].get("init_from")
        header["config"] = {**header["config"],
                            "init_from": str(init_from) if isinstance(init_from, (str, Path)) else None}
        return header

    def _build_module(self) -> KDVAEModule:
        spec = self.data_spec_
        # the packed winners-only layout unless a CUDA graph must capture static shapes
        return KDVAEModule(spec.n_features, self.n_clusters, self.latent_dim, self.hidden_dims, spec.likelihood,
                           self.objective, self.kl, winners_only=not getattr(self, "_cuda_graphs", False))

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        labels = self._initial_clusters(x, batch_size=batch_size, seed=seed, progress=progress)
        if self.warmup_epochs > 0:
            warmup = ClusterWarmup(module, labels.to(x.device), variational=self.variational)
            self._run(warmup, x, phase="warmup", epochs=self.warmup_epochs, batch_size=batch_size, seed=seed,
                      progress=progress, lr=self.warmup_lr)
        objective = module if self.variational else KAutoencoderObjective(module)
        labels = getattr(self, "_monitor_labels", None)
        if labels is not None:
            monitor = ClusterMonitor(lambda _: self._batched(lambda b: self._leaf_log_proba(b).argmax(-1), x).numpy(),
                                     labels, epochs, self.lr_decay_every)
            callbacks = [monitor, *callbacks]
        self._run(objective, x, phase="train", loss=self.loss, epochs=epochs,
                  batch_size=batch_size, seed=seed, progress=progress, callbacks=callbacks, lr=self.lr,
                  lr_decay=self.lr_decay, lr_decay_every=self.lr_decay_every)

    def _initial_clusters(self, x: torch.Tensor, *, batch_size: int, seed: int | None, progress: bool) -> torch.Tensor:
        """VaDE (trained here, or ``init_from``), then k-means in its embedding (Sec. 4.2).

        Sets ``vade_`` and ``init_labels_`` and appends the ``"init"`` record to the history.
        """
        labels = getattr(self, "_monitor_labels", None)
        if self.init_from is not None:
            vade = self._initialising_vade()
        elif self.vade_epochs + self.vade_pretrain_epochs > 0:
            vade = VaDE(n_clusters=self.n_clusters, latent_dim=self.latent_dim, hidden_dims=self.vade_hidden_dims,
                        likelihood=self.data_spec_.likelihood, epochs=self.vade_epochs, batch_size=batch_size,
                        lr=self.vade_lr, pretrain_epochs=self.vade_pretrain_epochs, init_candidates=1)
            vade.fit(x, device=self.device_, seed=seed, progress=progress, monitor_labels=labels)
        else:
            vade = None
        record: dict[str, Any] = {"phase": "init", "epoch": 0, "step": 0,
                                  "init_from": None if self.init_from is None else
                                  str(self.init_from) if isinstance(self.init_from, (str, Path)) else "VaDE object"}
        if vade is not None:
            self.history_.records.extend({**r, "phase": f"vade_{r['phase']}"} for r in vade.history_.records)
            features = vade.transform(x)
            if labels is not None:
                record.update({f"vade_{k}": v for k, v in cluster_scores(labels, vade.predict(x).numpy()).items()})
        else:
            features = x.reshape(x.shape[0], -1).cpu()
        self.vade_ = vade
        features = features.double().numpy()
        with initial_clusters_check(features, self.n_clusters, "k-DVAE"):
            kmeans = KMeans(self.n_clusters, n_init=10, random_state=seed).fit(features)
        self.init_labels_ = torch.as_tensor(kmeans.labels_, dtype=torch.long)
        record["loss"] = record["kmeans_inertia"] = float(kmeans.inertia_) / x.shape[0]
        record.update(cluster_scores(labels, kmeans.labels_))
        self.history_.records.append(record)
        return self.init_labels_

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module_
        scores = module.assignment_scores(x) if self.variational else module.reconstruction_scores(x)
        return torch.log_softmax(module.log_weights + scores, -1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``z̄`` from the encoder of each datum's assigned cluster (every cluster has its own latent space)."""
        best = self._leaf_log_proba(x).argmax(-1)
        return self.module_.encoders.embed(x)[best, torch.arange(x.shape[0], device=x.device)]

    def cluster_scores(self, data) -> torch.Tensor:
        """The deterministic score each cluster gives each datum, ``N x k`` (Eq. 8; k-DAE: ``log p(x | z̄_i)``)."""
        x = self._prepare_input(data)
        module = self.module_
        return self._batched(module.assignment_scores if self.variational else module.reconstruction_scores, x)

    def reconstruction_error(self, data) -> float:
        """Mean squared error ``Σ_d (x_d − E[x_d | z̄])²`` through each datum's assigned autoencoder."""
        x = self._prepare_input(data)
        module = self.module_

        def squared_error(batch: torch.Tensor) -> torch.Tensor:
            flat = batch.reshape(batch.shape[0], -1)
            rows = torch.arange(flat.shape[0], device=flat.device)
            best = self._leaf_log_proba(batch).argmax(-1)
            recon = module.decoders.mean(module.decoders(module.encoders.embed(flat))[best, rows])
            return (recon - flat).pow(2).sum(-1)

        return float(self._batched(squared_error, x).mean())

    @torch.no_grad()
    def sample(self, cluster: int, n: int = 16, seed: int | None = None) -> torch.Tensor:
        """``n`` draws ``z ~ N(0, I)`` decoded by the decoder of ``cluster`` (Figure 2).

        ``cluster`` is a leaf node id of :attr:`tree`, as :meth:`predict` returns (the flat tree
        numbers its leaves ``1..k``, so decoder ``i`` is leaf ``tree.leaves()[i]``). Returns
        ``E[x | z]`` on the CPU, ``n x C x H x W`` for image data (``n x D`` otherwise).
        """
        self._check_fitted()
        leaves = self.tree.leaves()
        cluster = int(cluster)
        if cluster not in leaves:
            raise ValueError(f"cluster must be a leaf of the tree ({leaves}), got {cluster!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        generator = torch.Generator(device="cpu")
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
        z = torch.randn(n, self.module_.latent_dim, generator=generator).to(self.device_)
        module = self.module_
        module.eval()
        with local_params():
            decoded = module.decoders.mean(module.decoders(z)[leaves.index(cluster)]).cpu()
        shape = self.data_spec_.image_shape
        return decoded.reshape(n, *shape) if shape is not None else decoded


@register_model("kdae")
class KDAE(KDVAE):
    """k-DAE (Opochinsky et al. 2020), the k-DVAE paper's ablation: plain autoencoders, no KL term.

    The same ``k`` batched autoencoders, VaDE + k-means initialisation and schedule as
    :class:`KDVAE`, but deterministic: no sampling and no regularisation. The warm-up and the main
    phase maximise reconstruction only (:class:`KAutoencoderObjective`: the best reconstruction
    wins each datum), and a datum goes to ``argmax_i log p_θi(x | z̄_i)``. The encoders'
    log-variance heads are never trained or used.

    Parameters are :class:`KDVAE`'s; ``objective`` must be ``"hard"`` (k-DAE has no soft variant:
    a reconstruction-only mixture with learned weights lets a few autoencoders take every datum,
    ACC 0.38 on digits).
    """

    variational = False
    density_model = False  # no likelihood: the variance heads are never trained

    def _check_config(self, x: torch.Tensor) -> None:
        super()._check_config(x)
        if self.objective != "hard":
            raise ValueError(f"k-DAE trains with the hard objective only, got objective={self.objective!r}")

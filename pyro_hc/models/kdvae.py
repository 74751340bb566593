"""k-DVAE: a mixture of variational autoencoders for deep clustering, with the k-DAE ablation.

Paper: "A mixture of variational autoencoders for deep clustering" (k-DVAE, ICLR 2021 submission);
the ablation k-DAE is Opochinsky, Chazan, Gannot & Goldberger, "K-autoencoders deep clustering"
(ICASSP 2020). Equation numbers below are the k-DVAE paper's.

Every cluster ``i`` owns an encoder ``λ_i`` and a decoder ``θ_i``; the cluster only chooses which
decoder generates ``x``. The ``k`` encoders (and the ``k`` decoders) are one batched network:
stacked weights ``k x in x out`` and one ``torch.baddbmm`` per layer
(:class:`~pyro_hc.nn.BatchedLinear`), never a Python loop over clusters.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from sklearn.cluster import KMeans
from torch import nn
from torch.distributions import constraints

from ..estimator import ClusterEstimator, as_setting_tuple
from ..infer import Callback, local_params
from ..nn import BatchedLinear
from ..tree import ClusterTree
from ._registry import register_model
from .networks import LIKELIHOODS, data_plate
from .vade import VaDE

__all__ = [
    "KDVAE", "KDAE", "KDVAEModule", "BatchedMLP", "BatchedEncoder", "BatchedDecoder",
    "KAutoencoderObjective", "ClusterWarmup", "OBJECTIVES",
]

OBJECTIVES = ("hard", "soft")


# networks -----------------------------------------------------------------------------------


class BatchedMLP(nn.Module):
    """``n_members`` MLPs ``dims[0] -> ... -> dims[-1]`` (ReLU between layers) as one batched network.

    Member ``m`` computes exactly what ``pyro_hc.nn.mlp(dims)`` computes with member ``m``'s weights
    (``final_activation=True`` adds a ReLU after the last layer too). Input ``N x dims[0]`` is
    shared by all members, ``n_members x N x dims[0]`` gives each member its own rows; the output is
    ``n_members x N x dims[-1]``.
    """

    def __init__(self, n_members: int, dims: Sequence[int], final_activation: bool = False) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"BatchedMLP needs at least two positive layer sizes, got {dims}")
        self.layers = nn.ModuleList(BatchedLinear(n_members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.final_activation = final_activation

    @classmethod
    def from_mlps(cls, mlps: Sequence[nn.Sequential], final_activation: bool = False) -> "BatchedMLP":
        """Stack ``k`` MLPs of one shape (``nn.Sequential`` of ``Linear``/``ReLU``) into one batched MLP."""
        per_member = [[m for m in seq if isinstance(m, nn.Linear)] for seq in mlps]
        dims = [per_member[0][0].in_features] + [layer.out_features for layer in per_member[0]]
        batched = cls(len(per_member), dims, final_activation)
        batched.layers = nn.ModuleList(
            BatchedLinear.from_linears([layers[j] for layers in per_member]) for j in range(len(dims) - 1)
        )
        return batched.to(per_member[0][0].weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for j, layer in enumerate(self.layers):
            x = layer(x)
            if j < last or self.final_activation:
                x = torch.relu(x)
        return x


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
        hidden = self.trunk(x.reshape(x.shape[0], -1))
        # clamp keeps exp() finite early in training, as in NormalEncoder
        scale = torch.exp(0.5 * self.log_var_head(hidden).clamp(-20.0, 10.0))
        return self.loc_head(hidden), scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``z̄_i = μ_λi(x)`` for every cluster, ``k x N x latent_dim``."""
        return self.loc_head(self.trunk(x.reshape(x.shape[0], -1)))


class BatchedDecoder(PyroModule):
    """The ``k`` decoders ``z -> p_θi(x | z)`` in one network.

    ``"bernoulli"``: member ``i`` gives logits (grey levels in [0, 1] scored by the Bernoulli
    log-likelihood, as :class:`~pyro_hc.models.networks.Decoder` does); ``"gaussian"``: it gives
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

    (``E_q[log N(z_i; 0, I) − log q(z_i | x, y = i)] = −KL(q(z | x, y = i) ‖ N(0, I))``: the KL of
    Eqs. 4–6 enters by its Monte Carlo estimate, Pyro's standard ELBO estimator).

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
    """

    def __init__(
        self,
        n_features: int,
        n_clusters: int,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 100),
        likelihood: str = "bernoulli",
        objective: str = "hard",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if n_clusters < 1 or latent_dim < 1:
            raise ValueError(f"n_clusters and latent_dim must be >= 1, got {n_clusters}, {latent_dim}")
        self.n_clusters = int(n_clusters)
        self.latent_dim = int(latent_dim)
        self.objective = objective
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

        Returns ``z`` (``k x N x d``, ``z_i ~ q(z | x, y = i)`` reparameterised), ``log q(z_i | x, y = i)``
        (``k x N``), the decoder outputs ``θ_i(z_i)`` (``k x N x D``) and ``L_i(x)`` (``k x N``).
        """
        x_flat = x.reshape(x.shape[0], -1)
        loc, scale = self.encoders(x_flat)
        q_z = dist.Normal(loc, scale).to_event(1)
        z = q_z.rsample()  # reparameterisation (Sec. 3.2)
        log_q = q_z.log_prob(z)
        out = self.decoders(z)
        elbos = self.decoders.log_prob(x_flat, out) + self._log_prior_z(z) - log_q  # Eq. 6, per cluster
        return z, log_q, out, elbos

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
            z_all, log_q, out_all, elbos = self.cluster_elbos(x)  # Algorithm 1
            if self.objective == "soft":
                # q(y = i | x) ∝ α_i exp L_i(x): Eq. 1 then equals logsumexp_i(log α_i + L_i)
                logits = (self.log_weights.unsqueeze(-1) + elbos).t()
                y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            else:
                # Eq. 5: q(y | x) is a point mass on the best cluster, so Eq. 1 becomes the max of Eq. 6
                best = elbos.detach().argmax(0)
                point_mass = nn.functional.one_hot(best, self.n_clusters).to(elbos.dtype)
                y = pyro.sample("y", dist.Categorical(probs=point_mass))
            rows = torch.arange(x.shape[0], device=x.device)
            z = pyro.sample("z", dist.Delta(z_all[y, rows], log_density=log_q[y, rows], event_dim=1))
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

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        x_flat = x.reshape(x.shape[0], -1)
        module = self.module
        with data_plate(x, index, num_data):
            log_lik = module.decoders.log_prob(x_flat, module.decoders(module.encoders.embed(x_flat)))
            pyro.factor("reconstruction", log_lik.max(0).values)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: the autoencoders have no latent random variables."""


class ClusterWarmup(nn.Module):
    """Warm each autoencoder up on its initial cluster: datum ``n`` trains only network ``labels[n]``.

    ``variational=True`` (k-DVAE): the cluster's single-sample ELBO ``L_{labels[n]}(x_n)``;
    ``False`` (k-DAE): its reconstruction log-likelihood ``log p(x_n | z̄)``. All ``k`` networks run
    as one batched computation and the assigned cluster's term is picked out.
    """

    def __init__(self, module: KDVAEModule, labels: torch.Tensor, variational: bool = True) -> None:
        super().__init__()
        self.module = module
        self.variational = variational
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long))

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        x_flat = x.reshape(x.shape[0], -1)
        module = self.module
        labels = self.labels if index is None else self.labels[index]
        with data_plate(x, index, num_data):
            if self.variational:
                scores = module.cluster_elbos(x_flat)[3]
            else:
                scores = module.decoders.log_prob(x_flat, module.decoders(module.encoders.embed(x_flat)))
            pyro.factor("warmup", scores[labels, torch.arange(x_flat.shape[0], device=x_flat.device)])

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
       budgets at 0 VaDE is skipped and k-means runs on the raw inputs.
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
        20 at 5e-4 after 20 take it from 0.79 to 0.81.

    Besides the shared fitted attributes, ``fit`` leaves ``vade_`` (the initialising VaDE, or None)
    and ``init_labels_`` (the k-means clusters, ``N`` labels); they are not saved by :meth:`save`.
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
    ) -> None:
        self.n_clusters = n_clusters
        self.objective = objective
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

    def _check_config(self, x: torch.Tensor) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        if self.n_clusters < 1 or self.latent_dim < 1:
            raise ValueError(f"n_clusters and latent_dim must be >= 1, got {self.n_clusters}, {self.latent_dim}")
        if self.n_clusters > x.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of data points ({x.shape[0]})")
        budgets = {"warmup_epochs": self.warmup_epochs, "vade_epochs": self.vade_epochs,
                   "vade_pretrain_epochs": self.vade_pretrain_epochs}
        for name, value in budgets.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def _build_module(self) -> KDVAEModule:
        spec = self.data_spec_
        return KDVAEModule(spec.n_features, self.n_clusters, self.latent_dim, self.hidden_dims, spec.likelihood,
                           self.objective)

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        labels = self._initial_clusters(x, batch_size=batch_size, seed=seed, progress=progress)
        if self.warmup_epochs > 0:
            warmup = ClusterWarmup(module, labels.to(x.device), variational=self.variational)
            self._run(warmup, x, phase="warmup", epochs=self.warmup_epochs, batch_size=batch_size, seed=seed,
                      progress=progress, lr=self.warmup_lr)
        objective = module if self.variational else KAutoencoderObjective(module)
        self._run(objective, x, phase="train", loss=self.loss, epochs=epochs,
                  batch_size=batch_size, seed=seed, progress=progress, callbacks=callbacks, lr=self.lr,
                  lr_decay=self.lr_decay, lr_decay_every=self.lr_decay_every)

    def _initial_clusters(self, x: torch.Tensor, *, batch_size: int, seed: int | None, progress: bool) -> torch.Tensor:
        """VaDE pretraining, then k-means in its embedding (Sec. 4.2); sets ``vade_`` and ``init_labels_``."""
        if self.vade_epochs + self.vade_pretrain_epochs > 0:
            vade = VaDE(n_clusters=self.n_clusters, latent_dim=self.latent_dim, hidden_dims=self.vade_hidden_dims,
                        likelihood=self.data_spec_.likelihood, epochs=self.vade_epochs, batch_size=batch_size,
                        lr=self.vade_lr, pretrain_epochs=self.vade_pretrain_epochs)
            vade.fit(x, device=self.device_, seed=seed, progress=progress)
            self.history_.records.extend({**r, "phase": f"vade_{r['phase']}"} for r in vade.history_.records)
            self.vade_ = vade
            features = vade.transform(x)
        else:
            self.vade_ = None
            features = x.reshape(x.shape[0], -1).cpu()
        kmeans = KMeans(self.n_clusters, n_init=10, random_state=seed).fit(features.double().numpy())
        self.init_labels_ = torch.as_tensor(kmeans.labels_, dtype=torch.long)
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

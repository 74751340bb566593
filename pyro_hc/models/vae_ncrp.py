"""VAE-nCRP (Goyal, Hu, Liang, Wang & Xing, ICCV 2017): a VAE with an nCRP prior, leaves emit.

The baseline of the HCRL paper (its Eq. 2): paths by nested stick-breaking, only leaf clusters
generate embeddings, with one fixed variance σ_D² shared by all of them, and node means that
drift from parent to child, ``α_c ~ Normal(α_par(c), σ_N² I)``, with mean-field Normal guides.
It shares the tree, the path index and the GROW / PRUNE / MERGE heuristics with HCRL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from pyro.nn import PyroParam
from torch.distributions import constraints

from ..distributions import GaussianTreeDrift, NestedStickBreaking
from ..nn import Decoder, NormalEncoder
from ._ncrp import NCRPTreeModule
from ._registry import register_model
from .hcrl import STICK_EPS, _HCRL
from ._plate import data_plate

__all__ = ["VAENCRP", "VAENCRPModule"]


class VAENCRPModule(NCRPTreeModule):
    """VAE-nCRP's generative model and guide.

    Generative story, for each datum n (HCRL paper Eq. 2; Goyal et al. 2017)::

        v_i ~ Beta(1, γ)                              every non-root node (global)
        α_root ~ Normal(0, I);  α_c ~ Normal(α_par(c), σ_N² I)   node means drift down the tree
        ζ_n ~ nCRP(v)                                 nested stick-breaking
        z_n ~ Normal(α_{leaf(ζ_n)}, σ_D² I)           only leaves emit; σ_D fixed and shared
        x_n ~ Bernoulli(f_θ(z_n))

    ζ is enumerated. An inner path ending at node u stands for a branch not yet grown under u: its
    leaf mean would drift ``depth - 1 - level(u)`` times from α_u, so z gets the marginal
    ``Normal(α_u, (σ_D² + (depth - 1 - level(u)) σ_N²) I)``, the nCRP's predictive for a new
    path — this is what lets GROW find room for one. Guide: ``q(v_i) = Beta(a_i, b_i)``,
    ``q(α_i) = Normal(m_i, s_i² I)`` per node, amortised Normal ``q(z|x)``.
    """

    node_parameter_names = ("node_mean_locs_unconstrained", "node_mean_scales_unconstrained",
                            "stick_a_unconstrained", "stick_b_unconstrained")

    def __init__(
        self,
        n_features: int,
        latent_dim: int,
        hidden_dims: Sequence[int],
        likelihood: str,
        depth: int,
        capacity: int,
        stick_concentration: float,
        leaf_scale: float,
        drift_scale: float,
    ) -> None:
        super().__init__(depth, capacity)
        self.stick_concentration = float(stick_concentration)
        self.leaf_scale = float(leaf_scale)
        self.drift_scale = float(drift_scale)
        self.encoder = NormalEncoder(n_features, hidden_dims, latent_dim)
        self.decoder = Decoder(latent_dim, list(reversed(hidden_dims)), n_features, likelihood)
        self.node_mean_locs = PyroParam(torch.zeros(capacity, latent_dim))
        self.node_mean_scales = PyroParam(torch.full((capacity, latent_dim), 0.1), constraints.positive)
        self.stick_a = PyroParam(torch.ones(capacity), constraints.positive)
        self.stick_b = PyroParam(torch.full((capacity,), self.stick_concentration), constraints.positive)

    def _tree_layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Active node ids, each one's parent position among them, and levels (cached per tree version)."""
        return self._tree_cached("layout", self._build_tree_layout)

    def _build_tree_layout(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tensors = self.tree.to_tensors(device)
        position = torch.full((self.capacity,), -1, dtype=torch.long, device=tensors.nodes.device)
        position[tensors.nodes] = torch.arange(len(tensors.nodes), device=tensors.nodes.device)
        parent_position = torch.where(tensors.parent >= 0, position[tensors.parent.clamp_min(0)], -1)
        return tensors.nodes, parent_position, tensors.level

    def _emission_scales(self) -> torch.Tensor:
        """σ of z for each path: σ_D for full paths, the new-branch marginal for inner paths, ``K``."""

        def build(device: torch.device) -> torch.Tensor:
            # a path's real nodes are its mask's True entries: the levels it still lacks drift from its last node
            missing_levels = self.depth - self.path_index().path_mask.sum(-1)
            return torch.sqrt(self.leaf_scale**2 + missing_levels * self.drift_scale**2)

        return self._tree_cached("emission_scales", build)

    @config_enumerate
    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        paths = self.path_index()
        nodes, parent_position, level = self._tree_layout()
        sticks_nodes = self.active_sticks()
        ones = torch.ones(len(sticks_nodes), device=sticks_nodes.device)
        v = pyro.sample("sticks", dist.Beta(ones, self.stick_concentration * ones).to_event(1))
        sticks = torch.full((self.capacity,), 0.5, device=v.device).index_copy(0, sticks_nodes,
                                                                                v.clamp(STICK_EPS, 1 - STICK_EPS))
        root_loc = torch.zeros(self.node_mean_locs.shape[-1], device=v.device)
        means = pyro.sample("node_means", GaussianTreeDrift(root_loc, 1.0, self.drift_scale, parent_position, level))
        means_by_id = torch.zeros_like(self.node_mean_locs).index_copy(0, nodes, means)
        scale_per_path = self._emission_scales()
        with data_plate(x, index, num_data):
            path = pyro.sample("path", NestedStickBreaking(sticks, paths))
            loc = means_by_id[paths.last_node[path]]
            scale = scale_per_path[path].unsqueeze(-1).expand_as(loc)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.decoder.distribution(z), obs=x.reshape(x.shape[0], -1))

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        sticks_nodes = self.active_sticks()
        nodes = self._tree_layout()[0]
        pyro.sample("sticks", dist.Beta(self.stick_a[sticks_nodes], self.stick_b[sticks_nodes]).to_event(1))
        pyro.sample("node_means", dist.Normal(self.node_mean_locs[nodes], self.node_mean_scales[nodes]).to_event(2))
        with data_plate(x, index, num_data):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # posterior summaries ---------------------------------------------------------------------

    def node_means(self) -> torch.Tensor:
        """Each node's posterior mean of α_i, ``capacity x latent_dim``."""
        return self.node_mean_locs

    def expected_sticks(self) -> torch.Tensor:
        return self.stick_a / (self.stick_a + self.stick_b)

    def path_log_likelihoods(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(ζ = k | v̄) + log N(z | m_{last(k)}, σ_k² I)``, ``... x K``."""
        paths = self.path_index()
        loc = self.node_mean_locs[paths.last_node]  # K x d
        scale = self._emission_scales()[:, None].expand_as(loc)
        component = dist.Normal(loc, scale).log_prob(z[..., None, :]).sum(-1)
        return paths.log_path_probs(self.expected_sticks()) + component

    def path_responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.path_log_likelihoods(self.embed(x)), -1)

    def _leaf_level(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot on the deepest level, ``B x depth``: only leaves emit (an inner path's z comes from
        the new leaf it stands for)."""
        eta = torch.zeros(x.shape[0], self.depth, device=x.device)
        eta[:, -1] = 1.0
        return eta

    def level_responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``q(l_n)``: all of it on the leaf level, ``B x depth`` (VAE-nCRP's leaves alone emit)."""
        return self._leaf_level(x)

    def expected_level_proportions(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """VAE-nCRP has no level proportions: η is the leaf level's indicator, ``B x depth``."""
        return self._leaf_level(x)

    def leaf_log_proba(self, x: torch.Tensor, given_leaf_level: bool = False) -> torch.Tensor:
        """``log q(ζ_n = full path k)``; every datum is its leaf's here, so ``given_leaf_level`` changes nothing."""
        n_full = self.path_index().n_full
        return torch.log_softmax(self.path_log_likelihoods(self.embed(x))[:, :n_full], -1)

    def sample_latent_prior(self, num_samples: int) -> torch.Tensor:
        """``ζ ~ nCRP(v̄)`` over every path, ``z ~ Normal(m_{last(ζ)}, σ_ζ² I)``, ``S x d``: the prior whose
        density :meth:`log_importance_weights` scores (globals at their posterior means)."""
        paths = self.path_index()
        path = dist.Categorical(logits=paths.log_path_probs(self.expected_sticks())).sample((num_samples,))
        loc = self.node_mean_locs[paths.last_node[path]]
        return dist.Normal(loc, self._emission_scales()[path, None].expand_as(loc)).sample()

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``log p(x, z | v̄, m) − log q(z|x)``, ``S x B`` (globals at their posterior means)."""
        loc, scale = self.encoder(x)
        q_z = dist.Normal(loc, scale).to_event(1)
        z = q_z.rsample((num_samples,))
        log_pz = torch.logsumexp(self.path_log_likelihoods(z), -1)
        return self.decoder.distribution(z).log_prob(x.reshape(x.shape[0], -1)) + log_pz - q_z.log_prob(z)

    @torch.no_grad()
    def _init_node(self, node: int, parent: int, target: torch.Tensor | None) -> None:
        centre = self.node_mean_locs[parent] if target is None else target[0]
        self.node_mean_locs_unconstrained[node] = centre + 0.1 * self.drift_scale * torch.randn_like(centre)
        self.node_mean_scales_unconstrained[node] = self.node_mean_scales_unconstrained[parent]
        self.stick_a_unconstrained[node] = 0.0
        self.stick_b_unconstrained[node] = float(np.log(self.stick_concentration))


@register_model("vae_ncrp")
class VAENCRP(_HCRL):
    """VAE-nCRP with the same training recipe and heuristics as HCRL (see :class:`VAENCRPModule`).

    Parameters as for :class:`~pyro_hc.models.HCRL2`, plus ``leaf_scale`` (σ_D, the fixed
    emission standard deviation of every leaf) and ``drift_scale`` (σ_N, parent-to-child drift),
    in the units of the embedding. ``level_concentration`` is unused.
    """

    per_datum_levels = False

    def __init__(
        self,
        depth: int = 3,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        likelihood: str | None = None,
        capacity: int = 128,
        stick_concentration: float = 1.0,
        leaf_scale: float = 0.5,
        drift_scale: float = 1.0,
        grow_every: int = 1,
        lock_epochs: int = 5,
        prune_threshold: float = 0.01,
        merge_threshold: float = 0.95,
        max_leaves: int | None = None,
        node_lr_factor: float = 10.0,
        stick_lr_factor: float | None = None,
        epochs: int = 100,
        batch_size: int = 100,
        lr: float = 2e-3,
        lr_decay: float = 0.9,
        lr_decay_every: int = 10,
        pretrain_epochs: int = 50,
        pretrain_lr: float = 1e-3,
    ) -> None:
        super().__init__(depth=depth, latent_dim=latent_dim, hidden_dims=hidden_dims, likelihood=likelihood,
                         capacity=capacity, stick_concentration=stick_concentration, level_concentration=1.0,
                         grow_every=grow_every, lock_epochs=lock_epochs, prune_threshold=prune_threshold,
                         merge_threshold=merge_threshold, max_leaves=max_leaves,
                         node_lr_factor=node_lr_factor, stick_lr_factor=stick_lr_factor, epochs=epochs,
                         batch_size=batch_size, lr=lr, lr_decay=lr_decay, lr_decay_every=lr_decay_every,
                         pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr, structure="paper")
        self.leaf_scale = leaf_scale
        self.drift_scale = drift_scale

    def _check_config(self, x: torch.Tensor) -> None:
        super()._check_config(x)
        if self.leaf_scale <= 0 or self.drift_scale <= 0:
            raise ValueError("leaf_scale and drift_scale must be positive")

    def _build_module(self) -> VAENCRPModule:
        spec = self.data_spec_
        return VAENCRPModule(spec.n_features, self.latent_dim, self.hidden_dims, spec.likelihood, self.depth,
                             self.capacity, self.stick_concentration, self.leaf_scale, self.drift_scale)

    @torch.no_grad()
    def _init_path(self, x: torch.Tensor) -> None:
        """The single path's means at the embedding's mean; the embedding is what the prior centres."""
        module = self.module_
        embedding = self._batched(module.encoder.embed, x).to(self.device_)
        for node in module.tree.nodes():
            module.node_mean_locs_unconstrained[node] = embedding.mean(0)

"""HCRL1 and HCRL2: Hierarchically Clustered Representation Learning (Shin, Song & Moon, AAAI 2020).

A VAE whose prior is a hierarchical Gaussian mixture on an nCRP tree: every node of the tree (not
only the leaves) emits embeddings, a datum picks a path by nested stick-breaking and a level on
it by a level proportion η — one η per data set (HCRL1) or one per datum (HCRL2, the paper's best
model, with its own encoder: the "unbalanced" two-encoder, one-decoder architecture).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from pyro.nn import PyroParam
from torch.distributions import constraints

from ..baselines import kmeans_leaves, level_group_counts, ward_levels
from ..distributions import BIRTH, NestedStickBreaking, add_child_in_order, dirichlet_laplace_approximation
from ..estimator import ClusterEstimator, as_setting_tuple
from ..nn import Decoder, NormalEncoder
from ..heuristics import NCRPHeuristics
from ..heuristics.elbo_moves import ELBOStructureMoves, conjugate_sticks, tree_elbo
from ..infer import Callback, local_params
from ..tree import ClusterTree
from ._ncrp import NCRPTreeModule
from ._plate import data_plate
from ._registry import register_model
from .pretrain import AutoencoderPretraining

__all__ = ["HCRL1", "HCRL2", "HCRLModule"]

#: the structure searches: HCRL's Algorithm 1, or moves accepted on the ELBO
STRUCTURES = ("paper", "elbo")
#: how ``structure="elbo"`` learns the sticks' q(v): SVI steps, or the conjugate update at epoch end
STICK_UPDATES = ("svi", "closed_form")
#: how the node Gaussians are learnt under ``structure="elbo"`` (``elbo_nodes``)
NODE_UPDATES = ("svi", "closed_form", "svi_then_closed_form")
#: what :meth:`HCRL.predict` returns for a datum (see ``leaf_assignment``)
LEAF_ASSIGNMENTS = ("path", "leaf_level")
#: the tree the SVI epochs start from (``init_tree``): Algorithm 1's single path, or a k-means + Ward
#: tree of the pretrained embedding
INIT_TREES = ("path", "embedding")


# sticks are kept inside (0, 1) so that log v and log(1 - v) stay finite under float32
STICK_EPS = 1e-6


def level_alpha(level_concentration: float | Sequence[float], depth: int) -> torch.Tensor:
    """The level proportions' Dirichlet ``α`` (length ``depth``) from a number (symmetric) or one per level.

    Raises
    ------
    ValueError
        If a value is not positive and finite, or a sequence does not have one value per level.
    """
    alpha = torch.as_tensor(level_concentration, dtype=torch.float32)
    if alpha.dim() == 0:
        alpha = alpha.expand(depth).clone()
    if alpha.shape != (depth,):
        raise ValueError(f"level_concentration must be a number or {depth} values (one per level), "
                         f"got shape {tuple(alpha.shape)}")
    if not bool(torch.isfinite(alpha).all() & (alpha > 0).all()):
        raise ValueError(f"level_concentration must be positive and finite, got {alpha.tolist()}")
    return alpha


#: γ of the sticks' Beta(1, γ) prior under ``structure="elbo"`` when none is given
ELBO_DEFAULT_STICK_CONCENTRATION = 3.0


def leaf_heavy_alpha(depth: int) -> tuple[float, ...]:
    """The level prior ``structure="elbo"`` uses by default: ``(0.1, …, 0.1, 0.2, 8)``, root first.

    Its mean puts about 96 % of a datum's level proportion on the leaf: the root's and the coarse
    nodes' broad Gaussians otherwise take whole fine clusters (on ``synthetic_tree`` at α = 1 the
    root emitted a third of the data), and the ELBO-tested births never see them. Data an internal
    node does emit (every-node emission) still go to it where its Gaussian explains them better.
    """
    return (0.1,) * (depth - 2) + (0.2, 8.0)


#: ``init_leaves="elbo"`` scores the initial trees of 1 .. this many k-means leaves
INIT_LEAVES_SCAN = 30


def tree_from_level_groups(groups: np.ndarray | torch.Tensor) -> tuple[ClusterTree, list[torch.Tensor]]:
    """An nCRP tree with every leaf at full depth from nested group labels, ``[N, depth - 1]`` (the
    output of :func:`~pyro_hc.baselines.kmeans_ward_levels`), one node per occupied group.

    Siblings are created heaviest first (their stick-breaking order). Returns the tree and, per
    level (root first), each point's node, ``long [N]``.
    """
    groups = torch.as_tensor(groups, dtype=torch.long)
    tree = ClusterTree()
    tree.graph.nodes[tree.root][BIRTH] = 0
    node_of_point = [torch.full((len(groups),), tree.root, dtype=torch.long)]
    for level in range(1, groups.shape[1] + 1):
        parents, labels = node_of_point[-1], groups[:, level - 1]
        pairs, row, counts = torch.unique(torch.stack([parents, labels], 1), dim=0, return_inverse=True,
                                          return_counts=True)
        # one node per (parent, group) pair (a loop over the tree's nodes at initialisation only)
        lookup = torch.empty(len(pairs), dtype=torch.long)
        for i in sorted(range(len(pairs)), key=lambda i: (int(pairs[i, 0]), -int(counts[i]))):
            lookup[i] = add_child_in_order(tree, int(pairs[i, 0]))
        node_of_point.append(lookup[row])
    return tree, node_of_point


def leaf_responsibilities(tree: ClusterTree, leaf_of_point: torch.Tensor, depth: int) -> torch.Tensor:
    """``[N, K, L]`` one-hot responsibilities: each point on its leaf's full path (``tree.paths()``
    order) at the leaf level."""
    row_of_leaf = torch.zeros(max(tree.nodes()) + 1, dtype=torch.long)
    for row, path in enumerate(tree.paths()):
        row_of_leaf[path[-1]] = row
    resp = torch.zeros(len(leaf_of_point), len(tree.paths()), depth)
    resp[torch.arange(len(leaf_of_point)), row_of_leaf[leaf_of_point.cpu()], -1] = 1.0
    return resp


def _initial_tree_elbo(candidate: tuple[ClusterTree, list[torch.Tensor]], z_loc: torch.Tensor, z_var: torch.Tensor,
                       log_eta: torch.Tensor, moves: ELBOStructureMoves) -> float:
    """The ELBO the structure moves would give ``candidate`` (:func:`tree_from_level_groups`'s
    output) in the embedding, every datum on its leaf: the nodes' and sticks' evidence under the
    moves' own priors (Normal–Gamma, child means on the parent's under ``mean_coupling``) and
    coarsening."""
    tree, node_of_point = candidate
    depth = len(node_of_point)
    resp = leaf_responsibilities(tree, node_of_point[-1], depth).to(z_loc)
    prior = moves.node_prior(z_loc, z_var)
    path_nodes = torch.as_tensor(tree.paths(), dtype=torch.long, device=z_loc.device)
    return float(tree_elbo(tree, path_nodes, resp, z_loc, z_var, log_eta, prior, moves.stick_concentration,
                           moves.data_weight_for(z_loc.shape[0])))


class HCRLModule(NCRPTreeModule):
    """HCRL's generative model and guide over a tree of ``depth`` levels.

    Generative story (HCRL phases 1–5, Eq. 3), for each datum n::

        v_i   ~ Beta(1, γ)                      for every non-root node i      (global)
        ζ_n   ~ nCRP(v)                         nested stick-breaking over full and inner paths
        η_n   = softmax(h_n),  h_n ~ Normal(μ_α, σ_α)   Laplace approximation of Dirichlet(α)
                                                (HCRL1: one h shared by all data)
        l_n   ~ Categorical(η_n)                level on the path
        z_n   ~ Normal(μ_{ζ_n,l_n}, diag σ²_{ζ_n,l_n})   every node on the path emits
        x_n   ~ Bernoulli(f_θ(z_n))             (or Normal for "gaussian" data)

    ζ and l are enumerated and summed out exactly by ``TraceEnum_ELBO`` — a tighter bound than
    the paper's mean-field ``q(ζ|x) q(l|x)`` (Eq. 4).

    **Inner paths are not mixture components of the training objective.** The objective is the
    truncated tree's mixture over its *full* paths, ``p(ζ_n = k | ζ_n is a full path, v)``
    (nested stick-breaking renormalised over the full paths, ``NestedStickBreaking(...,
    full_paths_only=True)``). An inner path ends at an internal node u and stands for a branch
    not yet grown under u; it is scored only to propose births (:meth:`path_responsibilities`,
    read by GROW under ``torch.no_grad``), with the stick mass the truncation leaves under u and
    u's Gaussian, detached, as the predictive of the unborn branch. So no gradient reaches u
    through an inner path. (Before, the inner path reused u's trainable Gaussian at every lower
    level and its leftover stick mass gave it real weight: internal nodes shrank onto one fine
    cluster each and acted as phantom leaves.)

    Guide (Eq. 4): ``q(v_i) = Beta(a_i, b_i)``; amortised Normal ``q(z|x)``; amortised Normal
    ``q(h|x)`` on the level logits (HCRL2) or a global Normal ``q(h)`` (HCRL1). Node Gaussians
    are point-estimated parameters, as in the paper.
    """

    node_parameter_names = ("node_locs_unconstrained", "node_scales_unconstrained",
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
        level_concentration: float | Sequence[float],
        per_datum_levels: bool,
    ) -> None:
        super().__init__(depth, capacity)
        self.per_datum_levels = per_datum_levels
        self.stick_concentration = float(stick_concentration)
        self.encoder = NormalEncoder(n_features, hidden_dims, latent_dim)
        self.decoder = Decoder(latent_dim, list(reversed(hidden_dims)), n_features, likelihood)
        if per_datum_levels:
            self.level_encoder = NormalEncoder(n_features, hidden_dims, depth)
        else:
            self.level_loc = PyroParam(torch.zeros(depth))
            self.level_scale = PyroParam(torch.ones(depth), constraints.positive)
        self.node_locs = PyroParam(torch.zeros(capacity, latent_dim))
        self.node_scales = PyroParam(torch.ones(capacity, latent_dim), constraints.positive)
        self.stick_a = PyroParam(torch.ones(capacity), constraints.positive)
        self.stick_b = PyroParam(torch.full((capacity,), self.stick_concentration), constraints.positive)
        prior_loc, prior_scale = dirichlet_laplace_approximation(level_alpha(level_concentration, depth))
        self.register_buffer("level_prior_loc", prior_loc)
        self.register_buffer("level_prior_scale", prior_scale)

    # generative model and guide ---------------------------------------------------------------

    def _sticks(self, v_active: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Scatter the active nodes' sticks into a capacity-long vector indexed by node id."""
        base = torch.full((self.capacity,), 0.5, dtype=v_active.dtype, device=v_active.device)
        return base.index_copy(0, nodes, v_active.clamp(STICK_EPS, 1 - STICK_EPS))

    @config_enumerate
    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        paths = self.path_index()
        nodes = self.active_sticks()
        ones = torch.ones(len(nodes), device=nodes.device)
        v = pyro.sample("sticks", dist.Beta(ones, self.stick_concentration * ones).to_event(1))  # phase 1 prior
        path_prior = NestedStickBreaking(self._sticks(v, nodes), paths, full_paths_only=True)
        level_prior = dist.Normal(self.level_prior_loc, self.level_prior_scale).to_event(1)  # phase 2 (Laplace)
        if not self.per_datum_levels:
            level_logits = pyro.sample("level_logits", level_prior)  # HCRL1: one η for all data
        with data_plate(x, index, num_data):
            if self.per_datum_levels:
                level_logits = pyro.sample("level_logits", level_prior)  # HCRL2: η_n per datum
            path = pyro.sample("path", path_prior)  # phase 1: ζ_n ~ nCRP, on the grown (full) paths
            level = pyro.sample("level", dist.Categorical(logits=level_logits))  # phase 3: l_n ~ Mult(η_n)
            node = paths.path_nodes[path, level]  # (levels, paths, 1) under enumeration
            z = pyro.sample("z", dist.Normal(self.node_locs[node], self.node_scales[node]).to_event(1))  # phase 4
            pyro.sample("x", self.decoder.distribution(z), obs=x.reshape(x.shape[0], -1))  # phase 5

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        nodes = self.active_sticks()
        pyro.sample("sticks", dist.Beta(self.stick_a[nodes], self.stick_b[nodes]).to_event(1))  # q(v_i|a_i,b_i)
        if not self.per_datum_levels:
            pyro.sample("level_logits", dist.Normal(self.level_loc, self.level_scale).to_event(1))
        with data_plate(x, index, num_data):
            if self.per_datum_levels:
                loc, scale = self.level_encoder(x)  # g_φη(x)
                pyro.sample("level_logits", dist.Normal(loc, scale).to_event(1))
            loc, scale = self.encoder(x)  # g_φz(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # posterior summaries (closed form at the variational means, no gradient) ------------------

    def node_means(self) -> torch.Tensor:
        """Each node's Gaussian mean μ_i in the embedding, ``capacity x latent_dim``."""
        return self.node_locs

    def expected_sticks(self) -> torch.Tensor:
        """``E_q[v_i] = a_i / (a_i + b_i)`` for every node id (capacity-long)."""
        return self.stick_a / (self.stick_a + self.stick_b)

    def level_log_proportions(self, x: torch.Tensor) -> torch.Tensor:
        """``log η`` at the mean of ``q(h|x)`` (HCRL2) or of the global ``q(h)`` (HCRL1), ``B x L``."""
        if self.per_datum_levels:
            return torch.log_softmax(self.level_encoder(x)[0], -1)
        return torch.log_softmax(self.level_loc, -1).expand(x.shape[0], -1)

    def expected_level_proportions(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``E[η_n | x_n]`` by Monte Carlo over ``q(h|x)`` (HCRL2) or the global ``q(h)`` (HCRL1), ``B x L``."""
        if self.per_datum_levels:
            loc, scale = self.level_encoder(x)
        else:
            loc, scale = self.level_loc.expand(x.shape[0], -1), self.level_scale.expand(x.shape[0], -1)
        return torch.softmax(dist.Normal(loc, scale).sample((num_samples,)), -1).mean(0)

    def joint_log_responsibilities(self, x: torch.Tensor, z: torch.Tensor | None = None,
                                   inner_paths: bool = False) -> torch.Tensor:
        """Unnormalised ``log q(ζ_n = k, l_n = l)``, ``B x K x L``, at ``z = E q(z|x)`` unless given.

        ``K`` is the full paths (the training objective's mixture: prior renormalised over them),
        or with ``inner_paths=True`` the full then the inner paths under the untruncated stick
        mass, an inner path's unborn levels scored by its last node's Gaussian, detached (the
        birth proposals of GROW; never part of the objective).
        """
        paths = self.path_index()
        if z is None:
            z = self.embed(x)
        log_path = paths.log_path_probs(self.expected_sticks())  # K
        node = paths.path_nodes  # K x L
        locs, scales = self.node_locs[node], self.node_scales[node]
        if inner_paths:
            unborn = ~paths.path_mask[..., None]  # an inner path's levels below its last node
            locs = torch.where(unborn, locs.detach(), locs)
            scales = torch.where(unborn, scales.detach(), scales)
        else:
            log_path = torch.log_softmax(log_path[: paths.n_full], -1)
            locs, scales = locs[: paths.n_full], scales[: paths.n_full]
        component = dist.Normal(locs, scales).log_prob(z[:, None, None, :]).sum(-1)
        return log_path[:, None] + self.level_log_proportions(x)[:, None, :] + component

    def path_responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Birth proposals over full then inner paths, ``B x K`` (read by GROW / PRUNE / MERGE):
        the posterior over paths if the unborn branches below each internal node were a component."""
        return torch.softmax(torch.logsumexp(self.joint_log_responsibilities(x, inner_paths=True), -1), -1)

    def level_responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``q(l_n)`` over the levels, ``B x L``."""
        return torch.softmax(torch.logsumexp(self.joint_log_responsibilities(x), -2), -1)

    def leaf_log_proba(self, x: torch.Tensor, given_leaf_level: bool = False) -> torch.Tensor:
        """``log q(ζ_n = full path k)``, ``B x n_full`` (``tree.leaves()`` order), the levels summed
        out; with ``given_leaf_level``, ``log q(ζ_n = k | l_n = leaf level)`` instead: the path of
        the leaf that would emit the datum (what a flat clustering of the leaves asks)."""
        joint = self.joint_log_responsibilities(x)
        return torch.log_softmax(joint[..., -1] if given_leaf_level else torch.logsumexp(joint, -1), -1)

    def sample_latent_prior(self, num_samples: int) -> torch.Tensor:
        """``S`` draws of the prior on ``z`` that :meth:`log_importance_weights` scores, ``S x d``:
        ``ζ ~ nCRP(v̄)`` on the full paths, ``η = softmax(h)`` with ``h ~ p(h)`` (HCRL2) or the guide's
        mean η̄ (HCRL1), ``l ~ Mult(η)``, ``z ~ Normal(μ_{ζ[l]}, σ²_{ζ[l]})``."""
        paths = self.path_index()
        log_path = paths.log_path_probs(self.expected_sticks())[: paths.n_full]
        path = dist.Categorical(logits=log_path).sample((num_samples,))
        if self.per_datum_levels:
            level_logits = dist.Normal(self.level_prior_loc, self.level_prior_scale).sample((num_samples,))
        else:
            level_logits = self.level_loc.expand(num_samples, -1)
        level = dist.Categorical(logits=level_logits).sample()
        node = paths.path_nodes[path, level]
        return dist.Normal(self.node_locs[node], self.node_scales[node]).sample()

    def log_importance_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``log p(x, z, h | v̄) − log q(z, h | x)`` for ``num_samples`` draws, ``S x B``.

        The global sticks enter at their posterior mean (and HCRL1's global η at its guide mean),
        so the IWAE bound is on ``log p(x | v̄, η̄)``.
        """
        paths = self.path_index()
        x_flat = x.reshape(x.shape[0], -1)
        loc, scale = self.encoder(x)
        q_z = dist.Normal(loc, scale).to_event(1)
        z = q_z.rsample((num_samples,))  # S x B x d
        log_w = self.decoder.distribution(z).log_prob(x_flat) - q_z.log_prob(z)
        if self.per_datum_levels:
            h_loc, h_scale = self.level_encoder(x)
            q_h = dist.Normal(h_loc, h_scale).to_event(1)
            h = q_h.rsample((num_samples,))
            prior_h = dist.Normal(self.level_prior_loc, self.level_prior_scale).to_event(1)
            log_w = log_w + prior_h.log_prob(h) - q_h.log_prob(h)
            log_eta = torch.log_softmax(h, -1)  # S x B x L
        else:
            log_eta = torch.log_softmax(self.level_loc, -1).expand(num_samples, x.shape[0], -1)
        log_path = torch.log_softmax(paths.log_path_probs(self.expected_sticks())[: paths.n_full], -1)
        node = paths.path_nodes[: paths.n_full]
        component = dist.Normal(self.node_locs[node], self.node_scales[node]).log_prob(
            z[:, :, None, None, :]).sum(-1)  # S x B x K x L (full paths)
        log_pz = torch.logsumexp(log_path[:, None] + log_eta[:, :, None, :] + component, dim=(-2, -1))
        return log_w + log_pz

    # structural moves -----------------------------------------------------------------------

    @torch.no_grad()
    def _init_node(self, node: int, parent: int, target: torch.Tensor | None) -> None:
        """A new node starts on a datum its inner path collected, with that data's spread (else at
        its parent's Gaussian plus a small perturbation), with the prior sticks (Algorithm 1, GROW)."""
        if target is None:
            centre, spread = self.node_locs[parent], self.node_scales[parent]
        else:  # see NCRPTreeModule._grow_target; never wider than the parent
            centre, spread = target[0], torch.minimum(target[1], self.node_scales[parent])
        self.node_locs_unconstrained[node] = centre + 0.1 * spread * torch.randn_like(spread)
        self.node_scales_unconstrained[node] = spread.log()
        self.stick_a_unconstrained[node] = 0.0  # log 1: the prior Beta(1, γ)
        self.stick_b_unconstrained[node] = float(np.log(self.stick_concentration))


    @torch.no_grad()
    def set_stick_posteriors(self, sticks: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set ``q(v_c) = Beta(a_c, b_c)`` for the nodes in ``sticks`` (``{node: (a_c, b_c)}``), e.g. the
        conjugate update of :func:`~pyro_hc.heuristics.elbo_moves.conjugate_sticks`."""
        if not sticks:
            return
        nodes = torch.as_tensor(list(sticks), dtype=torch.long, device=self.stick_a_unconstrained.device)
        a = torch.stack([ab[0] for ab in sticks.values()]).to(self.stick_a_unconstrained)
        b = torch.stack([ab[1] for ab in sticks.values()]).to(self.stick_b_unconstrained)
        self.stick_a_unconstrained[nodes] = a.log()
        self.stick_b_unconstrained[nodes] = b.log()

    @torch.no_grad()
    def set_node_gaussians(self, gaussians: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set the Gaussians of the nodes in ``gaussians`` (``{node: (mean, std)}``), e.g. the
        conjugate update of :func:`~pyro_hc.heuristics.elbo_moves.conjugate_nodes`."""
        if not gaussians:
            return
        nodes = torch.as_tensor(list(gaussians), dtype=torch.long, device=self.node_locs_unconstrained.device)
        self.node_locs_unconstrained[nodes] = torch.stack([g[0] for g in gaussians.values()]).to(
            self.node_locs_unconstrained)
        self.node_scales_unconstrained[nodes] = torch.stack([g[1] for g in gaussians.values()]).to(
            self.node_scales_unconstrained).clamp_min(1e-3).log()

    @torch.no_grad()
    def _set_node_gaussian(self, node: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Place node ``node``'s Gaussian (an ELBO-tested move's posterior mean and spread)."""
        self.node_locs_unconstrained[node] = mean
        self.node_scales_unconstrained[node] = std.clamp_min(1e-3).log()



class ClosedFormNodesFrom(Callback):
    """From epoch ``epoch`` on, the node Gaussians take no SVI step and the structure callback sets
    them to their conjugate posteriors at every epoch's end (``elbo_nodes="svi_then_closed_form"``).

    Applied at the start of every epoch from ``epoch`` (idempotent), so a fit resumed from a
    checkpoint past the switch is switched again.
    """

    def __init__(self, structure: ELBOStructureMoves, epoch: int, params: Sequence[torch.nn.Parameter]) -> None:
        self.structure, self.epoch, self.params = structure, int(epoch), list(params)

    def on_epoch_start(self, state) -> None:
        if state.epoch < self.epoch:
            return
        self.structure.closed_form_nodes = True
        for param in self.params:
            param.requires_grad_(False)
            param.grad = None


class _HCRL(ClusterEstimator):
    """Shared estimator of HCRL1 and HCRL2 (see :class:`HCRLModule` for the model).

    Training follows Algorithm 1: autoencoder pretraining, an initial tree in the pretrained
    embedding (``init_tree``: under the default ELBO search a k-means + Ward tree sized by the ELBO;
    under ``structure="paper"`` the paper's one path of ``depth`` Gaussians at the embedding's mean
    and spread), then SVI epochs after each of which the structure search may change the tree: the
    paper's GROW / PRUNE / MERGE (:class:`~pyro_hc.heuristics.NCRPHeuristics`,
    ``structure="paper"``) or moves accepted on the ELBO (``structure="elbo"``, the default; see
    ``structure`` below).

    Parameters
    ----------
    depth:
        Number of levels of the tree, root included (the paper's L: 3 or 4).
    latent_dim, hidden_dims, likelihood:
        Encoders ``D-hidden_dims-latent_dim`` (and ``-depth`` for HCRL2's level encoder); the
        decoder mirrors them.
    capacity:
        Nodes preallocated for the tree to grow into.
    stick_concentration:
        γ of the sticks' ``Beta(1, γ)`` prior. Default (None): 3 with ``structure="elbo"``, 1 with
        ``"paper"``.
    level_concentration:
        α of the level proportions' Dirichlet prior: one number (symmetric) or one per level,
        root first. Default (None): leaf-heavy with ``structure="elbo"`` (:func:`leaf_heavy_alpha`,
        ``(0.1, 0.2, 8)`` at depth 3), 1 with ``"paper"``. On data emitted by the leaves only, a
        leaf-heavy α keeps the internal nodes from acting as extra fine clusters.
    grow_every, lock_epochs, prune_threshold, merge_threshold, max_leaves:
        The heuristics' t_grow, t_lock, δ, cosine threshold and an optional cap on leaves.
    node_lr_factor:
        The node Gaussians train at ``node_lr_factor * lr``: they start from one path at the
        embedding's mean and must travel much further than the networks' weights between
        structural moves.
    stick_lr_factor:
        The sticks' ``Beta(a_i, b_i)`` parameters train at ``stick_lr_factor * lr`` (default: as
        the nodes). This sets how fast GROW dies down: once ``q(v)`` has converged, an inner
        path's prior share is about ``γ / (N_i + γ)`` for a node holding ``N_i`` data, so on a
        large data set GROW almost never samples one. A small factor keeps the sticks near their
        prior longer and the tree growing (on 5,000 MNIST digits, 10 epochs: 6 leaves at 0.1 against
        3 at the default). The paper does not say how it parameterises or schedules them.
    epochs, batch_size, lr, lr_decay, lr_decay_every, pretrain_epochs, pretrain_lr:
        As for VaDE.
    structure:
        How the tree is learnt. ``"elbo"`` (the default): moves accepted only when they raise the
        ELBO of the tree's mixture in the embedding, with conjugate Normal–Gamma node priors and
        Beta stick posteriors in closed form from per-node sufficient statistics
        (:class:`~pyro_hc.heuristics.elbo_moves.ELBOStructureMoves`; Hughes & Sudderth's memoized
        VI moves): leaf births (a leaf split in two), births from the data the ancestors emit,
        leaf merges, and the coarse moves — an internal node split in two (its children in two
        groups), two internal siblings merged, a subtree re-parented. Every proposal is logged
        with its ΔELBO in ``tree.events``. The node Gaussians the SVI steps train stay point
        estimates; an accepted move places them at the conjugate posterior's mean and spread.
        ``"paper"``: HCRL's Algorithm 1, GROW / PRUNE / MERGE
        (:class:`~pyro_hc.heuristics.NCRPHeuristics`, with ``grow_every``, ``lock_epochs``,
        ``prune_threshold``, ``merge_threshold``), as the paper trains it. Why the ELBO search is the
        default: on ``synthetic_tree`` (9 leaves in 3 groups, noise 0.5, seed 0, 30 + 60 epochs)
        Algorithm 1 reached dendrogram purity 0.71 and the ELBO search 0.94, against 0.94–0.95 for
        k-means + Ward on the model's own embedding given the true number of leaves
        (``benchmarks/hierarchy_recovery.py`` has the grid).
    elbo_lock_epochs:
        ``structure="elbo"`` only: epochs of training before the first move and after each epoch
        that changed the tree.
    elbo_birth_margin:
        ``structure="elbo"`` only: nats by which a birth must raise the ELBO to be accepted
        (see :class:`~pyro_hc.heuristics.elbo_moves.ELBOStructureMoves`).
    elbo_mean_coupling:
        ``structure="elbo"`` only: ``κ_c`` centres each child's mean on its parent's
        when the moves are scored (precision ``κ_c λ_child``,
        :class:`~pyro_hc.heuristics.elbo_moves.TreeNodePrior`), the Occam factor that makes a
        coarse split pay where the internal nodes emit little; None scores them with independent
        node priors. HCRL's paper has no such prior (its internal nodes emit instead); VAE-nCRP's
        has one. Why child means are coupled at all (κ = 1), measured by
        ``benchmarks/hierarchy_recovery.py`` (3 seeds, 30 + 60 epochs, noise 0.5 / 0.75 / 1.0, four
        kinds of tree; README): the hierarchical F-score rose in 11 of the 12 cells and the
        dendrogram purity in 9, because the levels above the leaves now group them (on one run at
        noise 0.75, HCRL2's own leaves re-linked by Ward's method lost 0.08 purity to its tree with
        independent priors and 0.02 with κ = 1). The default ``"auto"`` takes κ = 1 on data the
        moves score uncoarsened (at most ``elbo_coarsening`` points: the digits, the synthetic
        trees) and κ = 10 on coarsened data
        (:data:`~pyro_hc.heuristics.elbo_moves.COARSENED_MEAN_COUPLING`): on all of MNIST κ = 10
        groups the 26–32 leaves under 10–11 level-1 nodes instead of 4 (5 + 15 epochs, seeds
        0 / 1 / 2: ACC at a 10-cluster cut 0.717 / 0.690 / 0.710 against κ = 1's 0.525 / 0.554 /
        0.422, DP 0.614 / 0.701 / 0.553 against 0.553 / 0.561 / 0.396, leaf NMI alike), on 20
        Newsgroups it raised the hierarchical F-score from 0.408 to 0.461 (seed 0), while on the
        uncoarsened 1,797 digits it gives DP 0.601 / 0.613 / 0.617 against κ = 1's 0.662 / 0.628 /
        0.618 (README, "Large data").
    elbo_mean_coupling_shape:
        ``structure="elbo"`` only: None (default) uses ``elbo_mean_coupling`` as every parent's
        κ. A number ``a`` learns one coupling per level of the parents, ``κ_l ~ Gamma(a, a / κ_c)``
        with prior mean ``κ_c = elbo_mean_coupling``, from how close their children lie (``coupling_shape``
        of :class:`~pyro_hc.heuristics.elbo_moves.TreeNodePrior`): one κ does not suit every data
        set (above: κ = 10 helps MNIST and costs the digits). Measured, it groups less than a
        fixed κ, because it fits the ungrouped tree's spread too: on the digits (tutorial 06's
        settings, seeds 0–2, CPU) 2–3 level-1 nodes and DP 0.506–0.546 at prior mean 1 or 10,
        against 8–9 and 0.588–0.633 for the fixed κ = 1 in the same run (README, "Large data").
    elbo_sticks:
        ``structure="elbo"`` only: how ``q(v)`` is learnt. ``"svi"`` (default): by gradient steps with
        the rest of the guide, at ``stick_lr_factor * lr``. ``"closed_form"``: the conjugate update
        ``Beta(1 + M_c, γ + M_{>c})`` from the epoch's memoized responsibilities at every epoch's end
        (memoized VI's global step for the sticks), and no SVI step on them; ``stick_lr_factor`` is
        then unused. The paper trains them by gradient.
    elbo_nodes:
        ``structure="elbo"`` only: how the node Gaussians are learnt. ``"svi_then_closed_form"``
        (the default under ``structure="elbo"``): point estimates trained by gradient steps at
        ``node_lr_factor * lr`` for the first ``elbo_closed_form_from`` of the epochs (an accepted
        move places the nodes it changes at their conjugate posterior), then memoized VI's global
        step: every epoch's end sets every node to the mean and spread of its conjugate posterior
        from the epoch's statistics with ``E z² = z̄² + s²`` under ``q(z|x)``
        (:func:`~pyro_hc.heuristics.elbo_moves.conjugate_nodes`) and no SVI step moves them.
        ``"svi"``: SVI to the end (the default before, and the one under ``structure="paper"``).
        ``"closed_form"``: the global step from the first epoch, so between moves only the networks
        and the level proportions train; it grows too few leaves (memoized sweeps on the pretrained
        embedding of the synthetic cell below stopped at 3 of 9). Why the switch: the moves score
        the tree with Bayesian nodes while SVI trains point Gaussians, and on overlapping clusters
        the two disagree, so with SVI to the end the search never settles (``synthetic_tree`` at
        noise 0.75, balanced, leaf-only, seed 0, 30 + 60 epochs: an ancestor birth, a re-parent and
        a merge every six epochs to the last; with the switch at epoch 40 the last move came at
        epoch 41). Measured against ``"svi"`` (README): the recovery grid's mean DP rose at every
        noise level (3 seeds, 12 cells), and on the digits (tutorial 06's network and budget,
        seeds 0–2) DP 0.556 / 0.530 / 0.524 against 0.445 / 0.525 / 0.478 — there the moves still
        go on to the last epoch. Reading ``z̄`` alone in this step made the embedding collapse on
        the digits (DP 0.248 at seed 0).
    elbo_closed_form_from:
        ``elbo_nodes="svi_then_closed_form"`` only: the fraction of the epochs after which the node
        Gaussians are set in closed form (switched at epoch ``ceil(fraction · epochs)``).
    init_tree, init_leaves:
        The tree the SVI epochs start from. Default (None): ``"embedding"`` under
        ``structure="elbo"``, ``"path"`` under ``"paper"``. ``"path"``: Algorithm 1's single path at
        the embedding's mean and spread, grown by the structure search. ``"embedding"``: k-means into
        ``K`` leaves on the pretrained embedding and the Ward linkage of the centroids cut into
        nested groups level by level, every node at its subtree's mean and spread; the ELBO-tested
        moves then merge, delete, split and regroup from there. ``K`` is ``init_leaves`` (its groups
        at an even fan-out, :func:`~pyro_hc.baselines.level_group_counts`) or, with
        ``init_leaves="elbo"`` (default), chosen by the structure search's own objective (needs
        ``structure="elbo"``): the ``K`` in ``1 .. INIT_LEAVES_SCAN`` (30) whose tree scores the
        highest ELBO under the search's priors (the Occam factor of the Normal–Gamma nodes and the
        sticks, every datum on its k-means leaf), then the number of groups at each level above the
        leaves, top down, by the same score. The event log's ``init_tree`` entry keeps every score.
        Issue 15 allows an initial tree from the pretrained embedding, as VaDE's GMM starts; nothing
        here reads labels. On ``synthetic_tree`` (9 leaves in 3 groups, noise 0.5, the recovery
        test's settings) the scan picks 10 / 13 leaves under 4 / 5 groups for seeds 0 / 2, and the
        fits end with 9 / 11 leaves at DP 0.917 / 0.886 (the single path: 0.955 / 0.898; the
        recovery grid is in the README). On MNIST the ELBO still rises at 30 leaves (10,000 training
        digits, 5 + 15 epochs, seed 0: the fit ends with 51 leaves, leaf NMI 0.600 and purity 0.829
        against the single path's 11 leaves, 0.502 and 0.508; DP 0.358 against 0.277; VaDE at the
        same budget NMI 0.643, DP 0.468). The scan fits 30 k-means: seconds on small data, minutes
        on MNIST. Why the embedding is the default under the ELBO search: from one path the levels
        above the leaves group little, because a new level-1 node pays the nCRP's price of a new
        table (on the digits 10-14 nats at γ = 3, about ``γ log n``) while the leaves' data hardly
        tell groups apart (the level-1 nodes emit 2 % of the data under the leaf-heavy α); started
        from Ward's groups, the search keeps most of them. Measured (``benchmarks/hcrl_digits.py``,
        tutorial 06's network and budget, seeds 0-2, CPU): DP 0.662 / 0.628 / 0.618 with 8-9
        level-1 nodes against the single path's 0.558 / 0.610 / 0.535 with 1-3 (NMI 0.738 against
        0.732 on average); MNIST above, and on all 70,000 digits (60,000 trained, 5 + 15 epochs,
        seed 0) 95 leaves under 4 level-1 nodes, leaf NMI 0.597, DP 0.320 against the single path's
        68 leaves under one node, 0.568, 0.240 (VaDE: 0.660, 0.456); on ``synthetic_tree``'s
        recovery grid (3 seeds, 12 cells) a tie in mean DP (0.833 / 0.617 / 0.447 against 0.835 /
        0.604 / 0.434 at noise 0.5 / 0.75 / 1.0). The cost is time: the fits carry more leaves (digits: 106-147 s against 40-45 s).
    elbo_encoder_variance:
        ``structure="elbo"`` only: whether the memoized statistics use ``E z² = z̄² + s²`` of the
        encoder's ``q(z|x)`` (True: the ELBO at the current encoder) or treat ``z̄`` as observed
        points (False, default; see ``encoder_variance`` of
        :class:`~pyro_hc.heuristics.elbo_moves.ELBOStructureMoves`). On real images the points
        mislead: a VAE leaves some latent coordinates collapsed (on 10,000 MNIST digits, four of
        ten with ``z̄`` spread 0.03–0.05 against an encoder scale of 0.2), and in them tiny
        fluctuations of ``z̄`` look like tight clusters, so births split along coordinates that
        carry no information.
    elbo_coarsening:
        ``structure="elbo"`` only: α (default 3000) scores the moves and the initial scan on the
        coarsened ELBO with every datum weighing ζ = min(1, α / N) (Miller & Dunson, JASA 2019,
        whose ζ = α / (α + N) agrees where N ≫ α; ``coarsening`` of
        :class:`~pyro_hc.heuristics.elbo_moves.ELBOStructureMoves`), so the tree keeps the leaves
        α points would support; data of at most α points (the digits, the synthetic trees) are
        scored on the ELBO itself. None: the ELBO at any N. Why: the Normal–Gamma nodes' Occam
        factor grows like log N while splitting a cluster that is not quite Gaussian gains in
        proportion to N, so on all of MNIST the uncoarsened search grows leaves to the node
        capacity. Measured (``benchmarks/hcrl_mnist.py``, 60,000 training digits, all 70,000
        clustered, 5 + 15 epochs, CPU; HCRL2-L3, seeds 0 / 1): at α = 3000 26–29 leaves under 4
        level-1 nodes, leaf NMI 0.673 / 0.700, ACC at a 10-node cut 0.428 / 0.409, DP 0.545 /
        0.543 (k-means + Ward on its own embedding 0.546 / 0.581); at α = 1000 11–14 leaves under
        3 / 1 level-1 nodes, DP 0.569 / 0.482 (measured with ζ = α / (α + N)); None, seed 0: 95
        leaves, NMI 0.597, ACC 0.255, DP 0.320 (VaDE at the same budget: NMI 0.660 / 0.687, ACC
        0.623 / 0.674, VaDE + Ward DP 0.558 / 0.565). α = 3000 is the default because it leaves
        the 1,797 digits alone: coarsened at all (ζ = α / (α + N) at α = 1000–5000) they kept
        fewer level-1 nodes and DP fell from 0.662 / 0.628 / 0.618 to 0.553–0.622
        (``benchmarks/results/hcrl_digits_coarsening_cpu.md``).
    leaf_assignment:
        What :meth:`predict` returns for a datum (``labels_`` is read at the end of ``fit``); it
        changes no fit, and may be changed with ``set_params`` after one. ``"leaf_level"`` (default): the most probable path of
        ``q(ζ_n | l_n = leaf level)``, the leaf that would emit the datum. ``"path"``: the most
        probable full path of ``q(ζ_n)``, the levels summed out (the path posterior; the paper does
        not say which it reads). They differ on data an ancestor explains better than any leaf: the
        ancestor is shared by all its paths, so ``q(ζ_n)`` then follows the sticks' prior (the
        heaviest path), not the datum. Measured on the same fits (CPU): ``synthetic_tree``'s
        recovery cell at noise 0.5, seeds 0-9, DP 0.921 against 0.909 (lower at no seed); MNIST
        (reduced budget, 6 fits) leaf NMI +0.003 to +0.017, DP +0.008 to +0.019; 20 Newsgroups
        hierarchical F +0.005 / +0.008.
    """

    loss = "trace_enum"
    per_datum_levels: bool
    _PREDICTION_SETTINGS = ("leaf_assignment",)

    def __init__(
        self,
        depth: int = 3,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        likelihood: str | None = None,
        capacity: int = 128,
        stick_concentration: float | None = None,
        level_concentration: float | Sequence[float] | None = None,
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
        structure: str = "elbo",
        elbo_lock_epochs: int = 1,
        elbo_birth_margin: float = 0.0,
        elbo_mean_coupling: float | str | None = "auto",
        elbo_mean_coupling_shape: float | None = None,
        elbo_sticks: str = "svi",
        elbo_nodes: str | None = None,
        elbo_closed_form_from: float = 2 / 3,
        elbo_encoder_variance: bool = False,
        init_tree: str | None = None,
        init_leaves: int | str = "elbo",
        elbo_coarsening: float | None = 3000.0,
        leaf_assignment: str = "leaf_level",
    ) -> None:
        self.depth = depth
        self.latent_dim = latent_dim
        self.hidden_dims = as_setting_tuple(hidden_dims)
        self.likelihood = likelihood
        self.capacity = capacity
        self.stick_concentration = stick_concentration
        self.level_concentration = level_concentration
        self.grow_every = grow_every
        self.lock_epochs = lock_epochs
        self.prune_threshold = prune_threshold
        self.merge_threshold = merge_threshold
        self.max_leaves = max_leaves
        self.node_lr_factor = node_lr_factor
        self.stick_lr_factor = stick_lr_factor
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.structure = structure
        self.elbo_lock_epochs = elbo_lock_epochs
        self.elbo_birth_margin = elbo_birth_margin
        self.elbo_mean_coupling = elbo_mean_coupling
        self.elbo_mean_coupling_shape = elbo_mean_coupling_shape
        self.elbo_sticks = elbo_sticks
        self.elbo_nodes = elbo_nodes
        self.elbo_closed_form_from = elbo_closed_form_from
        self.elbo_encoder_variance = elbo_encoder_variance
        self.init_tree = init_tree
        self.init_leaves = init_leaves
        self.elbo_coarsening = elbo_coarsening
        self.leaf_assignment = leaf_assignment

    def _check_config(self, x: torch.Tensor) -> None:
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2 levels (root and leaves), got {self.depth}")
        if self.capacity < self.depth:
            raise ValueError(f"capacity={self.capacity} cannot hold one path of depth {self.depth}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {self.structure!r}")
        if not self._stick_concentration() > 0:
            raise ValueError(f"stick_concentration must be positive, got {self.stick_concentration}")
        level_alpha(self._level_concentration(), self.depth)  # raises for a bad value or length
        if self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.node_lr_factor <= 0:
            raise ValueError(f"node_lr_factor must be positive, got {self.node_lr_factor}")
        if self.stick_lr_factor is not None and not self.stick_lr_factor > 0:
            raise ValueError(f"stick_lr_factor must be positive (or None: as node_lr_factor), got {self.stick_lr_factor}")
        if isinstance(self.elbo_lock_epochs, bool) or not isinstance(self.elbo_lock_epochs, int) or self.elbo_lock_epochs < 0:
            raise ValueError(f"elbo_lock_epochs must be an integer >= 0, got {self.elbo_lock_epochs!r}")
        if self.elbo_sticks not in STICK_UPDATES:
            raise ValueError(f"elbo_sticks must be one of {STICK_UPDATES}, got {self.elbo_sticks!r}")
        if self.elbo_sticks == "closed_form" and self.structure != "elbo":
            raise ValueError("elbo_sticks='closed_form' needs structure='elbo' (its memoized statistics)")
        if self.elbo_nodes is not None and self.elbo_nodes not in NODE_UPDATES:
            raise ValueError(f"elbo_nodes must be one of {NODE_UPDATES} (or None), got {self.elbo_nodes!r}")
        if self.elbo_nodes in ("closed_form", "svi_then_closed_form") and self.structure != "elbo":
            raise ValueError(f"elbo_nodes={self.elbo_nodes!r} needs structure='elbo' (its memoized statistics)")
        if isinstance(self.elbo_closed_form_from, bool) or not 0 < self.elbo_closed_form_from < 1:
            raise ValueError(f"elbo_closed_form_from must be a fraction in (0, 1), got {self.elbo_closed_form_from!r}")
        self._given_leaf_level()  # raises for a bad leaf_assignment
        if not self.elbo_birth_margin >= 0:
            raise ValueError(f"elbo_birth_margin must be >= 0, got {self.elbo_birth_margin!r}")
        if self.elbo_coarsening is not None and (isinstance(self.elbo_coarsening, bool) or not isinstance(
                self.elbo_coarsening, (int, float)) or not 0 < self.elbo_coarsening < math.inf):
            raise ValueError(f"elbo_coarsening must be a positive finite number (or None: the ELBO itself), "
                             f"got {self.elbo_coarsening!r}")
        if self.elbo_mean_coupling_shape is not None and (
                isinstance(self.elbo_mean_coupling_shape, bool) or self.elbo_mean_coupling is None
                or not isinstance(self.elbo_mean_coupling_shape, (int, float)) or not self.elbo_mean_coupling_shape > 0):
            raise ValueError("elbo_mean_coupling_shape must be a positive number and needs elbo_mean_coupling (the "
                             f"prior mean of the learnt couplings), got {self.elbo_mean_coupling_shape!r} with "
                             f"elbo_mean_coupling={self.elbo_mean_coupling!r}")
        if self.init_tree is not None and self.init_tree not in INIT_TREES:
            raise ValueError(f"init_tree must be one of {INIT_TREES} (or None), got {self.init_tree!r}")
        if self.init_leaves != "elbo" and (isinstance(self.init_leaves, bool) or not isinstance(self.init_leaves, int)
                                           or self.init_leaves < 1):
            raise ValueError(f"init_leaves must be 'elbo' or an integer >= 1, got {self.init_leaves!r}")
        if self.init_leaves == "elbo" and self.init_tree == "embedding" and self.structure != "elbo":
            raise ValueError("init_leaves='elbo' scores the initial trees with the ELBO search's objective: it needs "
                             "structure='elbo' (or give init_leaves a number)")
        if self._init_tree_kind() == "embedding" and self.init_leaves != "elbo":
            if x.shape[0] < self.init_leaves:
                raise ValueError(f"init_leaves={self.init_leaves} needs at least as many data, got {x.shape[0]}")
            groups = level_group_counts(self.init_leaves, self.depth)
            if 1 + sum(groups) > self.capacity:
                raise ValueError(f"init_tree='embedding' with init_leaves={self.init_leaves} at depth {self.depth} "
                                 f"needs {1 + sum(groups)} nodes, more than capacity={self.capacity}")
        # every setting checked now rather than after pretraining: GROW / PRUNE / MERGE's too, whichever
        # structure, so that a bad one fails at once and not only once a user switches to the paper's search
        self._paper_heuristics(0)
        self.heuristics(0)

    def _build_module(self) -> HCRLModule:
        spec = self.data_spec_
        return HCRLModule(spec.n_features, self.latent_dim, self.hidden_dims, spec.likelihood, self.depth,
                          self.capacity, self._stick_concentration(), self._level_concentration(),
                          self.per_datum_levels)

    def _stick_concentration(self) -> float:
        """γ: as given, else 3 under ``structure="elbo"`` and 1 (the paper's runs) under ``"paper"``."""
        if self.stick_concentration is not None:
            return float(self.stick_concentration)
        return ELBO_DEFAULT_STICK_CONCENTRATION if self.structure == "elbo" else 1.0

    def _node_update(self) -> str:
        """``elbo_nodes``: as given, else ``"svi_then_closed_form"`` under ``structure="elbo"`` and
        ``"svi"`` (the paper's gradient steps) under ``"paper"``."""
        if self.elbo_nodes is not None:
            return self.elbo_nodes
        return "svi_then_closed_form" if self.structure == "elbo" else "svi"

    def _init_tree_kind(self) -> str:
        """``init_tree``: as given, else ``"embedding"`` under ``structure="elbo"`` and ``"path"``
        (Algorithm 1's single path) under ``"paper"``."""
        if self.init_tree is not None:
            return self.init_tree
        return "embedding" if self.structure == "elbo" else "path"

    def _level_concentration(self) -> float | Sequence[float]:
        """α: as given, else leaf-heavy under ``structure="elbo"`` (:func:`leaf_heavy_alpha`) and 1 under ``"paper"``."""
        if self.level_concentration is not None:
            return self.level_concentration
        return leaf_heavy_alpha(self.depth) if self.structure == "elbo" else 1.0

    def heuristics(self, seed: int | None = None) -> NCRPHeuristics | ELBOStructureMoves:
        """The structure-learning callback configured like this model: GROW / PRUNE / MERGE
        (``structure="paper"``) or the ELBO-tested births and merges (``structure="elbo"``)."""
        if self.structure == "elbo":
            return self._elbo_moves()
        return self._paper_heuristics(seed)

    def _elbo_moves(self) -> ELBOStructureMoves:
        """The ELBO-tested moves with this model's settings: the search of ``structure="elbo"``, and
        the objective :meth:`structure_elbo` and the initial tree's scan score trees with."""
        return ELBOStructureMoves(stick_concentration=self._stick_concentration(), lock_epochs=self.elbo_lock_epochs,
                                  max_leaves=self.max_leaves, capacity=self.capacity,
                                  birth_margin=self.elbo_birth_margin, mean_coupling=self.elbo_mean_coupling,
                                  closed_form_sticks=self.elbo_sticks == "closed_form",
                                  closed_form_nodes=self._node_update() == "closed_form",
                                  encoder_variance=self.elbo_encoder_variance,
                                  coarsening=self.elbo_coarsening,
                                  mean_coupling_shape=self.elbo_mean_coupling_shape)

    def _paper_heuristics(self, seed: int | None) -> NCRPHeuristics:
        return NCRPHeuristics(grow_every=self.grow_every, lock_epochs=self.lock_epochs,
                              prune_threshold=self.prune_threshold, merge_threshold=self.merge_threshold,
                              max_leaves=self.max_leaves, seed=seed)

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        if self.pretrain_epochs > 0:
            self._run(AutoencoderPretraining(module.encoder, module.decoder), x, phase="pretrain",
                      epochs=self.pretrain_epochs, batch_size=batch_size, seed=seed, progress=progress,
                      lr=self.pretrain_lr)
        self._init_tree(x, seed)
        # _check_config: closed forms only with structure="elbo" (HCRL's point Gaussians; VAE-nCRP has
        # neither); set at epoch end by the structure callback, not by the optimiser
        frozen = []  # out of the SVI steps for the whole fit
        if self.elbo_sticks == "closed_form":
            frozen += [module.stick_a_unconstrained, module.stick_b_unconstrained]
        node_update = self._node_update()
        # VAE-nCRP's module has no point Gaussians: read them only when they are to be set in closed form
        nodes = [module.node_locs_unconstrained, module.node_scales_unconstrained] if node_update != "svi" else []
        structure = self.heuristics(seed)
        schedule: tuple[Callback, ...] = ()
        if node_update == "closed_form":
            frozen += nodes
        elif node_update == "svi_then_closed_form":  # out of the SVI steps from the switch on
            schedule = (ClosedFormNodesFrom(structure, math.ceil(self.elbo_closed_form_from * epochs), nodes),)
        try:
            for param in frozen:
                param.requires_grad_(False)
            self._run(module, x, phase="train", loss=self.loss, epochs=epochs, batch_size=batch_size, seed=seed,
                      progress=progress, callbacks=(structure, *schedule, *callbacks), lr=self.lr,
                      lr_decay=self.lr_decay, lr_decay_every=self.lr_decay_every,
                      lr_multipliers=self._lr_multipliers())
        finally:
            for param in frozen + (nodes if schedule else []):
                param.requires_grad_(True)

    def _lr_multipliers(self) -> dict[str, float]:
        """Learning-rate factors of the node Gaussians and the sticks (parameter-name prefixes)."""
        sticks = self.node_lr_factor if self.stick_lr_factor is None else self.stick_lr_factor
        return {"node_": self.node_lr_factor, "stick_": sticks}

    @torch.no_grad()
    def _init_path(self, x: torch.Tensor) -> None:
        """Algorithm 1, line 1: the single path's Gaussians at the embedding's mean and spread."""
        module = self.module_
        embedding = self._batched(module.encoder.embed, x).to(self.device_)
        mean, std = embedding.mean(0), embedding.std(0).clamp_min(1e-3)
        for node in module.tree.nodes():
            module.node_locs_unconstrained[node] = mean + 0.1 * std * torch.randn_like(std)
            module.node_scales_unconstrained[node] = std.log()

    @torch.no_grad()
    def _init_tree(self, x: torch.Tensor, seed: int | None) -> None:
        """The tree the SVI epochs start from (``init_tree``).

        ``"path"``: Algorithm 1's single path (:meth:`_init_path`). ``"embedding"``: k-means into
        ``K`` leaves on the pretrained embedding, the Ward linkage of the centroids cut into nested
        groups at every level (:func:`~pyro_hc.baselines.ward_levels`), as VaDE's GMM starts from
        the pretrained embedding (no labels are read). ``K`` and the groups' counts are
        ``init_leaves`` at an even fan-out, or with ``init_leaves="elbo"`` those whose tree has the
        highest ELBO in the embedding (:func:`_initial_tree_elbo`: the moves' own objective, Occam
        factor included, every datum on its k-means leaf): ``K`` in ``1 .. INIT_LEAVES_SCAN`` at an
        even fan-out first, then each level's group count, top down. Siblings are created heaviest
        first, so the stick-breaking order follows the data. Every node starts at the mean and
        spread of the data in its subtree, and the sticks at their conjugate posterior given those
        counts (:func:`~pyro_hc.heuristics.elbo_moves.conjugate_sticks`).
        """
        if self._init_tree_kind() == "path":
            self._init_path(x)
            return
        module = self.module_
        embedding, z_var, log_eta = self._structure_inputs(x)
        seed = 0 if seed is None else int(seed)
        scores: dict[int, float] = {}
        group_scores: dict[str, float] = {}
        points = embedding.cpu().numpy()
        if self.init_leaves == "elbo":
            moves = self._elbo_moves()

            def score(leaves: tuple[np.ndarray, np.ndarray], counts: list[int]) -> float:
                candidate = tree_from_level_groups(ward_levels(*leaves, counts))
                return _initial_tree_elbo(candidate, embedding, z_var, log_eta, moves)

            best = None  # the number of leaves, at an even fan-out of the groups above them
            # no more leaves than distinct points: k-means cannot fill more (scikit-learn warns and repeats one)
            distinct = len(np.unique(points, axis=0))
            for n_leaves in range(1, min(INIT_LEAVES_SCAN, distinct, self._init_leaves_room()) + 1):
                leaves = kmeans_leaves(points, n_leaves, seed)
                scores[n_leaves] = score(leaves, level_group_counts(n_leaves, self.depth)[:-1])
                if best is None or scores[n_leaves] > scores[best[0]]:
                    best = (n_leaves, leaves)
            n_leaves, leaves = best
            # then the groups of each level above the leaves, top down, between their neighbours' counts
            counts = level_group_counts(n_leaves, self.depth)[:-1]
            best_score = scores[n_leaves]
            for level in range(len(counts)):
                low = counts[level - 1] if level > 0 else 1
                high = counts[level + 1] if level + 1 < len(counts) else n_leaves
                for count in range(low, high + 1):
                    trial = counts[:level] + [count] + counts[level + 1:]
                    if 1 + sum(trial) + n_leaves > self.capacity:
                        break
                    group_scores[",".join(map(str, trial))] = value = score(leaves, trial)
                    if value > best_score:
                        best_score, counts = value, trial
            groups = ward_levels(*leaves, counts)
        else:
            n_leaves = self.init_leaves
            counts = level_group_counts(n_leaves, self.depth)[:-1]
            groups = ward_levels(*kmeans_leaves(points, n_leaves, seed), counts)
        tree, node_of_point = tree_from_level_groups(groups)
        module.tree = tree
        # every node's Gaussian: the mean and spread of the data in its subtree (each point once per level)
        nodes = torch.cat(node_of_point).to(embedding.device)
        points_per_level = embedding.repeat(len(node_of_point), 1)
        count = torch.zeros(module.capacity, device=embedding.device).index_add_(
            0, nodes, torch.ones_like(nodes, dtype=embedding.dtype))
        total = torch.zeros(module.capacity, embedding.shape[1], device=embedding.device)
        mean = total.index_add(0, nodes, points_per_level) / count.clamp_min(1)[:, None]
        square = total.index_add(0, nodes, points_per_level.square()) / count.clamp_min(1)[:, None]
        std = (square - mean.square()).clamp_min(1e-6).sqrt()
        used = torch.unique(nodes)
        module.node_locs_unconstrained[used] = mean[used]
        module.node_scales_unconstrained[used] = std[used].clamp_min(1e-3).log()
        resp = leaf_responsibilities(tree, node_of_point[-1], self.depth)
        module.set_stick_posteriors(conjugate_sticks(tree, resp, self._stick_concentration()))
        tree.log_event("init_tree", tree.nodes(), epoch=0, step=0, source="embedding", leaves=len(tree.leaves()),
                       kmeans_leaves=n_leaves, groups=[*counts, n_leaves],
                       elbo_by_leaves=[[k, v] for k, v in scores.items()] or None,
                       elbo_by_groups=[[k, v] for k, v in group_scores.items()] or None)

    @torch.no_grad()
    def _structure_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the structure moves read of the data, on the model's device: the embedding ``E[z | x]``,
        its variance under ``q(z | x)`` (zeros unless ``elbo_encoder_variance``) and ``log E[η | x]``."""
        module = self.module_
        embedding = self._batched(module.encoder.embed, x).to(self.device_)
        z_var = (self._batched(lambda batch: module.encoder(batch)[1], x).to(self.device_).square()
                 if self.elbo_encoder_variance else torch.zeros_like(embedding))
        return embedding, z_var, self._batched(module.level_log_proportions, x).to(self.device_)

    def structure_elbo(self, data, leaf_groups=None) -> float:
        """The objective HCRL's structure moves maximise, for a tree over ``data`` in this model's embedding.

        The tree's mixture in the embedding scored as ``structure="elbo"`` scores a move: the nodes'
        Normal–Gamma evidence (child means on the parent's under ``elbo_mean_coupling``), the sticks'
        Beta evidence and the level proportions' data terms, coarsened as the fit coarsens them, with
        every datum emitted by its leaf — the hard assignment the initial tree's scan uses, so that
        the fitted tree and any candidate are scored alike. It answers "does the model's own
        objective prefer this tree?", which tells a failure of the search (a candidate scores higher
        than the fitted tree) from a mismatch of objective and task (the true tree scores lower):
        ``benchmarks/hierarchy_recovery.py --objective-check``. The value is the structure part of
        the ELBO only (the decoder's term and the encoder's entropy are the same for every tree).

        Parameters
        ----------
        data : Dataset, tensor or array
            The data, as for :meth:`predict`.
        leaf_groups : array-like of int, shape (N, depth - 1), optional
            Each datum's group at levels ``1 .. depth - 1``, the last column its leaf; a group is
            read within its parent's (one node per pair), e.g. :func:`~pyro_hc.baselines.kmeans_ward_levels`
            on :meth:`transform`'s output. Default: the fitted tree, each datum on the leaf
            :meth:`predict` gives it.

        Returns
        -------
        float
            The structure ELBO in nats (higher is preferred).
        """
        x = self._prepare_input(data)
        if leaf_groups is None:  # each leaf's row: its path below the root; each datum takes its leaf's
            paths = np.array(self.tree.paths(), dtype=np.int64)
            ancestors = np.zeros((int(paths.max()) + 1, self.depth - 1), dtype=np.int64)
            ancestors[paths[:, -1]] = paths[:, 1:]
            leaf_groups = ancestors[self.predict(x).numpy()]
        groups = np.asarray(leaf_groups)
        if groups.ndim != 2 or groups.shape != (x.shape[0], self.depth - 1):
            raise ValueError(f"leaf_groups must have shape (N, depth - 1) = ({x.shape[0]}, {self.depth - 1}), "
                             f"got {groups.shape}")
        if not np.issubdtype(groups.dtype, np.integer):
            raise ValueError(f"leaf_groups must hold integer group labels, got dtype {groups.dtype}")
        embedding, z_var, log_eta = self._structure_inputs(x)
        return _initial_tree_elbo(tree_from_level_groups(groups), embedding, z_var, log_eta, self._elbo_moves())

    def _init_leaves_room(self) -> int:
        """The most k-means leaves whose initial tree fits ``capacity`` (and ``max_leaves``)."""
        room = 1
        while room < self.capacity and 1 + sum(level_group_counts(room + 1, self.depth)) <= self.capacity:
            room += 1
        return room if self.max_leaves is None else min(room, self.max_leaves)

    def _given_leaf_level(self) -> bool:
        """``leaf_assignment``, checked at fit and at every prediction (``set_params`` may change it after a fit)."""
        if self.leaf_assignment not in LEAF_ASSIGNMENTS:
            raise ValueError(f"leaf_assignment must be one of {LEAF_ASSIGNMENTS}, got {self.leaf_assignment!r}")
        return self.leaf_assignment == "leaf_level"

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.leaf_log_proba(x, given_leaf_level=self._given_leaf_level())

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.encoder.embed(x)

    def level_proportions(self, data, num_samples: int = 64) -> torch.Tensor:
        """``E[η_n | x_n]`` (HCRL2, Monte Carlo over ``q(h|x)``) or the global ``E[η]`` (HCRL1), ``N x L``."""
        module = self.module_
        return self._batched(lambda batch: module.expected_level_proportions(batch, num_samples),
                             self._prepare_input(data))

    @torch.no_grad()
    def decode_nodes(self) -> tuple[list[int], torch.Tensor]:
        """Each node's Gaussian mean decoded to data space (HCRL Figure 1, top right).

        Returns the node ids (``tree.nodes()`` order) and ``E[x | z = μ_node]`` for each,
        ``M x C x H x W`` for image data (``M x D`` otherwise), on the CPU.
        """
        self._check_fitted()
        nodes = self.tree.nodes()
        index = torch.as_tensor(nodes, dtype=torch.long, device=self.device_)
        with local_params():
            decoded = self.module_.decoder.mean(self.module_.node_means()[index]).cpu()
        shape = self.data_spec_.image_shape
        return nodes, decoded.reshape(len(nodes), *shape) if shape is not None else decoded

    def level_responsibilities(self, data) -> torch.Tensor:
        """``q(l_n)``: how much each level of its path explains each datum, ``N x L``."""
        return self._batched(self.module_.level_responsibilities, self._prepare_input(data))

    def path_responsibilities(self, data) -> torch.Tensor:
        """``q(ζ_n)`` over ``tree.paths()`` then ``tree.inner_paths()``, ``N x K``."""
        return self._batched(self.module_.path_responsibilities, self._prepare_input(data))


@register_model("hcrl2")
class HCRL2(_HCRL):
    __doc__ = "HCRL2: a level proportion η_n per datum, inferred by its own encoder.\n\n" + _HCRL.__doc__
    per_datum_levels = True


@register_model("hcrl1")
class HCRL1(_HCRL):
    __doc__ = "HCRL1: one level proportion η shared by all data (a global guide).\n\n" + _HCRL.__doc__
    per_datum_levels = False

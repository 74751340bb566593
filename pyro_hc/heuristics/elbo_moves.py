"""Structure moves accepted only when they raise the ELBO: births, merges and re-parenting on nCRP trees.

Memoized variational inference (Hughes & Sudderth, NIPS 2013; Hughes, Kim & Sudderth, AISTATS
2015) proposes births and merges of mixture components and keeps one only if the ELBO, computed
in closed form from per-component sufficient statistics, goes up. Here the components are the
nodes of an nCRP tree in the embedding of a VAE (HCRL), and the ELBO is that of the tree's
mixture over (path, level) in the embedding, with the encoder's ``q(z|x) = Normal(z̄, s²)`` held
fixed and two Bayesian ingredients the point-estimated model lacks — the *Occam factor* that lets
the ELBO prefer fewer components:

* every node's Gaussian gets a conjugate Normal–Gamma prior (one per coordinate,
  :class:`~pyro_hc.distributions.NormalGamma`, centred on the embedding's mean) and its optimal
  ``q(μ, λ)``; its part of the ELBO is then ``log Z(posterior) − log Z(prior) − (N/2) log 2π``
  from the statistics ``N_i = Σ r``, ``Σ r E z``, ``Σ r E z²`` of the data it emits;
* the sticks ``v_c ~ Beta(1, γ)`` get their optimal ``q(v_c) = Beta(1 + M_c, γ + M_{>c})``
  (``M_c``: mass of the paths through ``c``; ``M_{>c}``: of its later siblings, in creation
  order), whose part of the ELBO is ``log B(1 + M_c, γ + M_{>c}) − log B(1, γ)``;

plus the entropy of the responsibilities ``q(ζ_n, l_n)`` and their level term (unchanged by the
moves below). Optionally (``mean_coupling``, :class:`TreeNodePrior`) each child's mean is centred on
its parent's instead of the embedding's mean; the nodes' part is then a mean-field bound found by
coordinate ascent over the whole tree (:func:`tree_node_posterior`), and it is what lets a grouping
of leaves that emit alone raise the ELBO. Optionally (``coarsening`` α) the moves score the
*coarsened* ELBO, every datum's part weighed by ζ = min(1, α / N) (Miller & Dunson 2019), so that the
number of components stops growing with N on clusters that are not exactly Gaussian.
:func:`tree_elbo` computes the whole; :func:`birth_delta` and :func:`merge_delta`
the change a move makes, from the statistics of the nodes it touches only.

Moves (:class:`ELBOStructureMoves`, an engine callback run at epoch end):

birth
    Split a leaf in two: a two-component Gaussian mixture fitted by a few EM steps to the
    leaf's data (weights: the path's responsibilities, points: ``E q(z|x)``), initialised by the
    sign of the projection on the principal axis. The second component becomes a new sibling
    leaf, after its older siblings in the stick-breaking.
merge
    Fold a leaf into a sibling leaf. Candidate pairs: the nearest by the symmetrised KL
    divergence between the two leaves' Gaussians.
ancestor birth
    A new leaf below a node one level above the leaves, from the tighter half (a two-component
    split) of the data that node's paths' *ancestors* emit: a cluster no leaf covers ends up with
    the broad root and coarse Gaussians, where a leaf birth cannot see it.
coarse moves (split internal, merge internal, re-parent)
    A new sibling of an internal node adopts some of its children (two groups by 2-means of the
    children's subtree means); two internal siblings become one; a subtree moves to another
    internal node of its parent's level. Every datum keeps its ``q`` over (leaf, level), so only
    the node and stick terms change and the ΔELBO is exact (:func:`relabel_delta`); the best
    candidate of an epoch without leaf moves is applied if it raises the ELBO.

Every proposal, accepted or rejected, is logged in the tree's event log with its ΔELBO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..distributions import NormalGamma, add_child_in_order, sibling_order
from ..infer import distributed
from ..infer.callbacks import Callback, FitState
from ..tree import ClusterTree

__all__ = ["COARSENED_MEAN_COUPLING", "ELBOStructureMoves", "TreeNodePrior", "ancestor_birth_delta", "birth_delta",
           "conjugate_nodes", "conjugate_sticks",
           "emission_weights", "merge_delta",
           "merge_internal_tree", "node_prior", "propose_split", "refine_responsibilities",
           "refined_birth_delta", "refined_merge_delta", "relabel_delta", "relabel_responsibilities",
           "reparent_tree", "split_internal_tree", "subtree_weights", "tree_elbo", "tree_node_posterior"]

#: ``κ_c`` of ``mean_coupling="auto"`` on coarsened data. Coarsening weighs each datum ζ = α / N, so the
#: data's evidence for grouping leaves under level-1 parents shrinks with N while the coupling prior's
#: does not; what κ = 10 and κ = 1 measured on MNIST, 20 Newsgroups and the digits is listed under
#: ``elbo_mean_coupling`` of :class:`~pyro_hc.models.hcrl.HCRL2` and in the README ("Large data").
COARSENED_MEAN_COUPLING = 10.0


def _xlogx(x: Tensor) -> Tensor:
    return torch.where(x > 0, x * x.clamp_min(1e-30).log(), torch.zeros_like(x))


def node_prior(z_loc: Tensor, z_var: Tensor, precision_scale: float = 0.1, concentration: float = 1.0,
               variance_fraction: float = 0.1) -> NormalGamma:
    """The nodes' Normal–Gamma prior, per coordinate, from the embedding of the data.

    Mean at the embedding's mean; ``κ`` pseudo-observations on μ; λ's prior mean is
    ``1 / (variance_fraction · total variance)`` with ``concentration`` (``a``) setting its weight.
    """
    mean = z_loc.mean(0)
    variance = (z_loc.square() + z_var).mean(0) - mean.square()
    rate = concentration * variance_fraction * variance.clamp_min(1e-6)
    return NormalGamma(mean, torch.full_like(mean, precision_scale), torch.full_like(mean, concentration), rate)


def _node_evidence(prior: NormalGamma, count: Tensor, sum_z: Tensor, sum_z2: Tensor) -> Tensor:
    """Each node's part of the ELBO, summed over coordinates: ``[...]`` from ``count [...]``, sums ``[..., d]``."""
    if isinstance(prior, TreeNodePrior):
        raise ValueError("a node's ELBO term is local only under independent node priors; with child means centred "
                         "on the parent's (TreeNodePrior) score moves by tree_elbo (the refined deltas do)")
    return prior.log_evidence(count[..., None], sum_z, sum_z2).sum(-1)


@dataclass(frozen=True)
class TreeNodePrior:
    """Node Gaussians whose means are centred on their parent's: the Occam factor of the grouping.

    Per coordinate, with the Normal–Gamma ``base`` (:func:`node_prior`: ``m₀, κ₀, a₀, b₀``)::

        λ_u ~ Gamma(a₀, b₀)                              every node u
        μ_root ~ Normal(m₀, 1 / (κ₀ λ_root))
        μ_u ~ Normal(μ_parent(u), 1 / (κ · λ_u))            every other node
        z ~ Normal(μ_u, 1 / λ_u)                          the data node u emits

    with ``κ = coupling`` for every parent p, or, with ``coupling_shape`` set, a coupling learnt
    per level of the parents, shared by all of that level's children and the coordinates::

        κ_l ~ Gamma(coupling_shape, coupling_shape / coupling)   (prior mean: coupling)

    so that the data decide how tightly children sit around their parents, instead of one κ for
    every data set (a fixed κ = 10 groups MNIST's leaves into ten level-1 nodes but costs the
    digits' purity). One κ per level, not per parent: a per-parent κ adds a Gamma's KL to every
    proposed parent, and on two tight pairs of leaves in 2-d that cost outweighed the grouping's
    gain (tests/test_coarse_moves.py), where a level's κ is paid once, whatever the grouping.

    Under :class:`~pyro_hc.distributions.NormalGamma` priors alone (independent, centred on the
    embedding's mean) the ELBO of leaf-emitted data does not depend on how the leaves are grouped:
    an internal node that emits nothing costs its prior and stick terms and earns nothing, so no
    coarse split pays. Here a child whose mean lies near its parent's earns ``κ · λ_child``
    per squared distance, and leaves of one group gain from a common parent of their own. HCRL's
    paper has no such dependence (its internal nodes emit instead, Sec. 3); VAE-nCRP's prior has it.

    The posterior is mean-field ``Π_u q(μ_u) q(λ_u) Π_l q(κ_l)`` (Normal, Gamma, Gamma), found by
    coordinate ascent (:func:`tree_node_posterior`): given ``E λ`` and ``E κ`` the means solve one
    linear system per coordinate (the tree's Gaussian field), given ``q(μ)`` each ``q(λ_u)`` is
    conjugate, and given both each ``q(κ_l)`` is. ``posterior`` is the base prior's, for the
    E-steps and the Gaussians placed after a move (node by node).
    """

    base: NormalGamma
    coupling: float = 0.1
    iterations: int = 100
    tolerance: float = 1e-7
    coupling_shape: float | None = None

    def __post_init__(self) -> None:
        if not self.coupling > 0:
            raise ValueError(f"coupling must be positive, got {self.coupling}")
        if self.coupling_shape is not None and not self.coupling_shape > 0:
            raise ValueError(f"coupling_shape must be positive (or None: a fixed coupling), got {self.coupling_shape}")

    def posterior(self, count: Tensor, sum_z: Tensor, sum_z2: Tensor) -> NormalGamma:
        return self.base.posterior(count, sum_z, sum_z2)


def _tree_node_elbo(parents: Tensor, count: Tensor, sum_z: Tensor, sum_z2: Tensor, prior: TreeNodePrior,
                    loc: Tensor, var: Tensor, concentration: Tensor, rate: Tensor,
                    coupling_concentration: Tensor | None = None, coupling_rate: Tensor | None = None) -> Tensor:
    """The nodes' part of the ELBO under :class:`TreeNodePrior` at ``q(μ) = Normal(loc, var)``,
    ``q(λ) = Gamma(concentration, rate)`` (all ``[M, d]``; ``parents [M]``, −1 at the root) and,
    with a learnt coupling, ``q(κ_l) = Gamma(coupling_concentration, coupling_rate)`` (``[M]``,
    indexed by the parents' level; the levels without children are not read)."""
    base = prior.base
    m0, a0, b0 = base.loc, base.concentration, base.rate
    root = parents < 0
    up = parents.clamp_min(0)
    kappa0 = base.precision_scale.expand_as(loc)
    if prior.coupling_shape is None:
        e_kappa = torch.full_like(kappa0, prior.coupling)
        e_log_kappa = e_kappa.log()
        kappa_kl = loc.new_zeros(())
    else:
        group = torch.as_tensor(_node_levels(parents.cpu().numpy()), device=loc.device)[up]  # the parent's level
        e_kappa = (coupling_concentration / coupling_rate)[group, None].expand_as(loc)
        e_log_kappa = (torch.digamma(coupling_concentration) - coupling_rate.log())[group, None].expand_as(loc)
        used = torch.zeros_like(root)
        used[group[~root]] = True
        shape = torch.as_tensor(prior.coupling_shape, dtype=loc.dtype, device=loc.device)
        kappa_kl = torch.distributions.kl_divergence(
            torch.distributions.Gamma(coupling_concentration[used], coupling_rate[used]),
            torch.distributions.Gamma(shape, shape / prior.coupling)).sum()
    kappa = torch.where(root[:, None], kappa0, e_kappa)  # κ₀ at the root
    log_kappa = torch.where(root[:, None], kappa0.log(), e_log_kappa)
    centre = torch.where(root[:, None], m0.expand_as(loc), loc[up])
    centre_var = torch.where(root[:, None], torch.zeros_like(var), var[up])
    e_lambda = concentration / rate
    e_log_lambda = torch.digamma(concentration) - rate.log()
    log_2pi = math.log(2 * math.pi)
    data_sq = sum_z2 - 2 * sum_z * loc + count[:, None] * (loc.square() + var)  # E Σ r (z − μ)²
    prior_sq = (loc - centre).square() + var + centre_var  # E (μ_u − μ_parent)²
    data = 0.5 * count[:, None] * (e_log_lambda - log_2pi) - 0.5 * e_lambda * data_sq
    mean_prior = 0.5 * (log_kappa + e_log_lambda - log_2pi) - 0.5 * kappa * e_lambda * prior_sq
    precision_prior = a0 * b0.log() - torch.lgamma(a0) + (a0 - 1) * e_log_lambda - b0 * e_lambda
    mean_entropy = 0.5 * (var.log() + log_2pi + 1)
    precision_entropy = concentration - rate.log() + torch.lgamma(concentration) + (1 - concentration) * torch.digamma(
        concentration)
    return (data + mean_prior + precision_prior + mean_entropy + precision_entropy).sum() - kappa_kl


def tree_node_posterior(parents: Tensor, count: Tensor, sum_z: Tensor, sum_z2: Tensor,
                        prior: TreeNodePrior, return_coupling: bool = False) -> tuple[Tensor, ...]:
    """Coordinate ascent to the mean-field ``q(μ) q(λ) [q(κ)]`` of :class:`TreeNodePrior`, in float64.

    ``parents [M]``: each node's parent's position (−1 at the root); statistics ``count [M]``,
    ``sum_z``, ``sum_z2 [M, d]``. Returns the nodes' ELBO term and ``(loc, var, concentration, rate)``,
    and with ``return_coupling`` also ``q(κ)``'s ``(concentration, rate)`` per level of the parents
    (``[M]``, the prior's at a level without children; ``None, None`` with a fixed coupling).
    Vectorised over nodes and coordinates: each sweep solves the means' ``[d, M, M]`` systems.
    """
    dtype, device = sum_z.dtype, sum_z.device
    parents = parents.to(device=device, dtype=torch.long)
    count, sum_z, sum_z2 = count.double(), sum_z.double(), sum_z2.double()
    prior = _as_double(prior)
    # The sweeps run in NumPy on the host: the arrays are tiny ([M, d]) and a sweep is ~25 array
    # operations, for which torch's per-call overhead was most of the time of a move's scoring.
    up_all = parents.clamp_min(0).cpu().numpy()
    root = (parents < 0).cpu().numpy()[:, None]
    child = np.flatnonzero(~root[:, 0])
    up = up_all[child]
    n, s_z, s_z2 = (t.detach().cpu().numpy() for t in (count, sum_z, sum_z2))
    m0, kappa0, a0, b0 = (np.broadcast_to(t.detach().cpu().numpy(), s_z.shape) for t in (
        prior.base.loc, prior.base.precision_scale, prior.base.concentration, prior.base.rate))
    nodes, dims = s_z.shape
    learned = prior.coupling_shape is not None
    group = _node_levels(parents.cpu().numpy())[up]  # each child's κ: its parent's level
    e_kappa = np.full(nodes, prior.coupling)  # E κ_l of every level
    # q(κ_l) = Gamma(a_κ + d·|children below level l| / 2, b_κ + Σ_children Σ_j E λ E (μ_u − μ_p)² / 2)
    if learned:
        kappa_prior_rate = prior.coupling_shape / prior.coupling
        kappa_concentration = prior.coupling_shape + 0.5 * dims * np.bincount(group, minlength=nodes)
        kappa_rate = np.full(nodes, kappa_prior_rate)
    concentration = a0 + 0.5 * (n[:, None] + 1)  # fixed by the counts
    root_target = np.where(root, kappa0 * m0, 0.0)
    e_lambda = a0 / b0
    rows = np.arange(nodes)
    loc = var = rate = None
    for _ in range(prior.iterations):
        kappa = kappa0.copy()  # each node's prior precision factor: κ₀ at the root, its parent level's κ
        kappa[child] = e_kappa[group][:, None]
        # q(μ): the Gaussian field on the tree given E λ and E κ (mean-field means are its exact means)
        tie = e_kappa[group][:, None] * e_lambda[child]  # [children, d]: child–parent precision
        diagonal = e_lambda * n[:, None] + kappa * e_lambda
        np.add.at(diagonal, up, tie)
        system = np.zeros((dims, nodes, nodes))  # d x M x M
        system[:, rows, rows] = diagonal.T
        system[:, child, up] = -tie.T
        system[:, up, child] = -tie.T
        target = e_lambda * s_z + root_target * e_lambda
        loc = np.linalg.solve(system, target.T[..., None])[..., 0].T
        var = 1.0 / diagonal
        # q(λ_u): conjugate given q(μ) and q(κ)
        centre = np.where(root, m0, loc[up_all])
        centre_var = np.where(root, 0.0, var[up_all])
        data_sq = np.clip(s_z2 - 2 * s_z * loc + n[:, None] * (loc ** 2 + var), 0.0, None)
        prior_sq = (loc - centre) ** 2 + var + centre_var
        new_rate = b0 + 0.5 * data_sq + 0.5 * kappa * prior_sq
        converged = rate is not None and bool((np.abs(new_rate - rate) <= prior.tolerance * rate).all())
        rate = new_rate
        e_lambda = concentration / rate
        if learned:  # q(κ_l): conjugate given q(μ) and q(λ)
            spread = (e_lambda[child] * prior_sq[child]).sum(-1)  # per child: E λ E (μ_u − μ_p)², summed over d
            new_kappa_rate = kappa_prior_rate + 0.5 * np.bincount(group, weights=spread, minlength=nodes)
            converged = converged and bool((np.abs(new_kappa_rate - kappa_rate) <= prior.tolerance * kappa_rate).all())
            kappa_rate = new_kappa_rate
            e_kappa = kappa_concentration / kappa_rate
        if converged:
            break
    loc, var, concentration, rate = (torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=device)
                                     for a in (loc, var, concentration, rate))
    coupling = (None, None)
    if learned:
        coupling = tuple(torch.as_tensor(a, dtype=torch.float64, device=device)
                         for a in (kappa_concentration, kappa_rate))
    elbo = _tree_node_elbo(parents, count, sum_z, sum_z2, prior, loc, var, concentration, rate, *coupling)
    if return_coupling:
        return elbo.to(dtype), loc, var, concentration, rate, *coupling
    return elbo.to(dtype), loc, var, concentration, rate


def _node_levels(parents: np.ndarray) -> np.ndarray:
    """Every node's level from ``parents [M]`` (positions, −1 at the root), in any order."""
    parents = np.asarray(parents)
    levels = np.zeros(len(parents), dtype=np.int64)
    for _ in range(len(parents)):
        new = np.where(parents < 0, 0, levels[np.maximum(parents, 0)] + 1)
        if np.array_equal(new, levels):
            break
        levels = new
    return levels


def _as_double(prior: TreeNodePrior) -> TreeNodePrior:
    base = prior.base
    as_double = (t.double() for t in (base.loc, base.precision_scale, base.concentration, base.rate))
    return TreeNodePrior(NormalGamma(*as_double), prior.coupling, prior.iterations, prior.tolerance,
                         prior.coupling_shape)


def _stick_term(masses: Tensor, gamma: float) -> Tensor:
    """``Σ_c log B(1 + M_c, γ + M_{>c}) − log B(1, γ)`` for one sibling group, masses in creation order."""
    later = masses.flip(-1).cumsum(-1).flip(-1) - masses
    a, b = 1.0 + masses, gamma + later
    log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return (log_beta - (math.lgamma(1.0) + math.lgamma(gamma) - math.lgamma(1.0 + gamma))).sum(-1)


def _mass_through(tree: ClusterTree, resp: Tensor) -> dict[int, Tensor]:
    """The mass ``M_c`` of the full paths through every node, from ``resp [N, K, L]``."""
    path_mass = resp.sum((0, 2))  # K
    through = {node: resp.new_zeros(()) for node in tree.nodes()}
    for row, path in enumerate(tree.paths()):
        for node in path:
            through[node] = through[node] + path_mass[row]
    return through


@torch.no_grad()
def conjugate_nodes(tree: ClusterTree, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                    prior: NormalGamma | TreeNodePrior) -> dict[int, tuple[Tensor, Tensor]]:
    """Every node's Gaussian at its optimal ``q(μ, λ)`` from ``resp [N, K, L]``: ``{node: (mean, std)}``.

    The memoized global step of the node Gaussians (Hughes & Sudderth 2013): the statistics
    ``Σ r``, ``Σ r E z``, ``Σ r E z²`` of what each node emits give the conjugate posterior (under
    :class:`TreeNodePrior`, the mean-field coordinate ascent of :func:`tree_node_posterior`); the
    point Gaussian the model uses is its mean ``E μ`` with spread ``(E λ)^{-1/2}``, as a move places them.
    A node that emits nothing gets its prior's (under :class:`TreeNodePrior`: pulled to its children).
    """
    n, k, levels = resp.shape
    onehot, nodes = _emission_matrix(tree, torch.as_tensor(tree.paths(), device=resp.device), resp.dtype, resp.device)
    count, sum_z, sum_z2 = _statistics(resp.reshape(n, k * levels) @ onehot, z_loc, z_loc.square() + z_var)
    if isinstance(prior, TreeNodePrior):
        position = {node: i for i, node in enumerate(nodes)}
        parents = torch.as_tensor([-1 if tree.parent(u) is None else position[tree.parent(u)] for u in nodes])
        _, loc, _, concentration, rate = tree_node_posterior(parents, count, sum_z, sum_z2, prior)
    else:
        post = prior.posterior(count[:, None], sum_z, sum_z2)
        loc, concentration, rate = post.loc, post.concentration, post.rate
    loc, std = loc.to(z_loc), (rate / concentration).sqrt().to(z_loc)
    return {node: (loc[i], std[i]) for i, node in enumerate(nodes)}


def conjugate_sticks(tree: ClusterTree, resp: Tensor, gamma: float) -> dict[int, tuple[Tensor, Tensor]]:
    """The optimal ``q(v_c) = Beta(1 + M_c, γ + M_{>c})`` of every non-root node from ``resp [N, K, L]``.

    ``M_c`` is the mass of the full paths through ``c``, ``M_{>c}`` that of its later siblings (in
    creation order): the memoized global step of the sticks (Hughes & Sudderth 2013, the DP
    mixture's stick update), and the ``q(v)`` at which :func:`tree_elbo` scores a tree.
    """
    through = _mass_through(tree, resp)
    sticks = {}
    for parent in tree.internal_nodes():
        children = sibling_order(tree, parent)
        masses = torch.stack([through[c] for c in children])
        later = masses.flip(-1).cumsum(-1).flip(-1) - masses
        for child, mass, rest in zip(children, masses, later):
            sticks[child] = (1.0 + mass, gamma + rest)
    return sticks


def _statistics(weights: Tensor, z_loc: Tensor, z_sq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``Σ w``, ``Σ w E z``, ``Σ w E z²`` per column of ``weights [N, C]``."""
    return weights.sum(0), weights.T @ z_loc, weights.T @ z_sq


def _emission_matrix(tree: ClusterTree, path_nodes: Tensor, dtype, device) -> tuple[Tensor, list[int]]:
    """``[K·L, nodes]`` one-hot: which node (``tree.nodes()`` order) emits at each (path, level)."""
    nodes = tree.nodes()
    column = {node: i for i, node in enumerate(nodes)}
    cells = path_nodes.reshape(-1)
    onehot = torch.zeros(len(cells), len(nodes), dtype=dtype, device=device)
    onehot[torch.arange(len(cells)), torch.as_tensor([column[int(i)] for i in cells])] = 1.0
    return onehot, nodes


def _cell_statistics(resp: Tensor, z_loc: Tensor, z_sq: Tensor, data_weight: float = 1.0) -> tuple[
        Tensor, Tensor, Tensor]:
    """ζ-weighted ``Σ r``, ``Σ r E z``, ``Σ r E z²`` of every (path, level) cell of ``resp [N, K, L]``:
    ``[K·L]``, ``[K·L, d]``, ``[K·L, d]``. A node's statistics are the sums over the cells it emits
    at, so every structure on the same paths is scored from these without touching the N data again."""
    n, k, levels = resp.shape
    flat = resp.reshape(n, k * levels)
    return data_weight * flat.sum(0), data_weight * (flat.T @ z_loc), data_weight * (flat.T @ z_sq)


def _data_terms(resp: Tensor, log_eta: Tensor) -> Tensor:
    """The entropy and level terms of ``q(ζ_n, l_n)`` over the paths in ``resp [N, K', L]`` (unweighted)."""
    n, _, levels = resp.shape
    return -_xlogx(resp).sum() + (resp * log_eta.expand(n, levels)[:, None, :]).sum()


def _structure_elbo(tree: ClusterTree, path_nodes: Tensor, cells: tuple[Tensor, Tensor, Tensor],
                    prior: NormalGamma | TreeNodePrior, gamma: float) -> Tensor:
    """The nodes' and sticks' part of :func:`tree_elbo` from the (ζ-weighted) cell statistics
    (:func:`_cell_statistics`, rows in ``path_nodes`` order): ``O(K·L·nodes·d)``, no pass over the data."""
    cell_count, cell_sum_z, cell_sum_z2 = cells
    onehot, nodes = _emission_matrix(tree, path_nodes, cell_count.dtype, cell_count.device)
    count, sum_z, sum_z2 = onehot.T @ cell_count, onehot.T @ cell_sum_z, onehot.T @ cell_sum_z2
    position = {node: i for i, node in enumerate(nodes)}
    if isinstance(prior, TreeNodePrior):
        parents = torch.as_tensor([-1 if tree.parent(u) is None else position[tree.parent(u)] for u in nodes])
        total = tree_node_posterior(parents, count, sum_z, sum_z2, prior)[0]
    else:
        total = _node_evidence(prior, count, sum_z, sum_z2).sum()
    # M_c, the mass of the full paths through c: a node lies at most once on a path, so it is the
    # path masses summed over the cells it emits at
    levels = path_nodes.shape[-1]
    through = cell_count.reshape(-1, levels).sum(-1).repeat_interleave(levels) @ onehot
    for parent in tree.internal_nodes():
        total = total + _stick_term(through[[position[c] for c in sibling_order(tree, parent)]], gamma)
    return total


def refine_responsibilities(tree: ClusterTree, path_nodes: Tensor, rows: Sequence[int], resp: Tensor, z_loc: Tensor,
                            z_var: Tensor, log_eta: Tensor, prior: NormalGamma, steps: int,
                            data_weight: float = 1.0) -> Tensor:
    """A few partial E-steps: each datum's mass on the full paths ``rows`` is redistributed over
    those paths' (path, level) cells under the nodes' conjugate posteriors (the other paths' cells
    stay as they are). Any ``q`` gives a valid ELBO; this one lets the data a move touches
    re-choose their level and path under the proposed structure ("refined briefly").
    ``data_weight``: ζ of a coarsened ELBO (:func:`tree_elbo`), which weighs the statistics the
    posteriors are read from; each datum's own ``q`` is the same softmax at any ζ.

    Each step reads the posteriors of the nodes on ``rows`` only (the untouched cells' statistics
    are summed once), so a step costs ``O(N·|rows|·L·d)`` whatever the size of the tree."""
    if steps == 0:
        return resp
    n, k, levels = resp.shape
    onehot, _ = _emission_matrix(tree, path_nodes, resp.dtype, resp.device)
    rows = torch.as_tensor(list(rows), dtype=torch.long, device=resp.device)
    z_sq = z_loc.square() + z_var
    cells = (rows[:, None] * levels + torch.arange(levels, device=resp.device)).reshape(-1)  # the touched cells
    untouched = torch.ones(k * levels, dtype=torch.bool, device=resp.device)
    untouched[cells] = False
    touched = onehot[cells]
    used = touched.sum(0) > 0  # the nodes the touched cells emit from
    touched = touched[:, used]  # |rows|·L x |used|
    fixed = [onehot[untouched][:, used].T @ s[untouched]
             for s in _cell_statistics(resp, z_loc, z_sq, data_weight)]  # what the other cells give them
    part = resp[:, rows, :]  # N x |rows| x L
    mass = part.sum((1, 2))  # N
    log_eta = log_eta.expand(n, levels)
    for _ in range(steps):
        count, sum_z, sum_z2 = (f + touched.T @ s for f, s in zip(fixed, _cell_statistics(part, z_loc, z_sq,
                                                                                          data_weight)))
        post = prior.posterior(count[:, None], sum_z, sum_z2)  # |used| x d
        ell = post.expected_log_likelihood(z_loc[:, None, :], z_var[:, None, :]).sum(-1)  # N x |used|
        cell_ell = (ell @ touched.T).reshape(n, len(rows), levels)
        path_mass = part.sum((0, 2))
        log_prior = (path_mass.clamp_min(1e-8) / path_mass.sum().clamp_min(1e-8)).log()
        logits = cell_ell + log_prior[None, :, None] + log_eta[:, None, :]
        part = torch.softmax(logits.reshape(n, -1), -1).reshape(logits.shape) * mass[:, None, None]
    resp = resp.clone()
    resp[:, rows, :] = part
    return resp


def tree_elbo(tree: ClusterTree, path_nodes: Tensor, resp: Tensor, z_loc: Tensor, z_var: Tensor,
              log_eta: Tensor, prior: NormalGamma, gamma: float, data_weight: float = 1.0) -> Tensor:
    """The ELBO of the tree's mixture in the embedding at the optimal node and stick posteriors.

    With ``data_weight`` ζ < 1 it is the *coarsened* ELBO (Miller & Dunson, "Robust Bayesian
    inference via coarsening", JASA 2019): every datum's part — its statistics in the nodes', its
    mass in the sticks', its entropy and level terms — weighs ζ, the power likelihood
    ``p(x | θ)^ζ`` against the unchanged priors. A mixture scored on N points with ζ = α / N
    chooses its components as if it had seen α of them, so the number it keeps stops growing
    with N where the clusters are not exactly Gaussian (the Bayesian mixture's known failure under
    misspecification: every real cluster is split until the pieces are). ζ = 1: the ELBO.

    Parameters
    ----------
    tree:
        The tree; its full paths (``tree.paths()`` order) index ``resp``'s second dimension.
    path_nodes:
        ``long [K, L]``: node id of every full path at every level.
    resp:
        ``[N, K, L]`` responsibilities ``q(ζ_n = k, l_n = l)`` (rows sum to one).
    z_loc, z_var:
        ``[N, d]`` mean and variance of ``q(z_n | x_n)``.
    log_eta:
        ``[N, L]`` (or ``[L]``) expected log level proportions ``E log η_{n,l}``.
    prior, gamma:
        The nodes' Normal–Gamma prior and the sticks' ``Beta(1, γ)`` concentration.
    data_weight:
        ζ in (0, 1], the weight of every datum (above).
    """
    cells = _cell_statistics(resp, z_loc, z_loc.square() + z_var, data_weight)
    return _structure_elbo(tree, path_nodes, cells, prior, gamma) + data_weight * _data_terms(resp, log_eta)


def _group_masses(tree: ClusterTree, parent: int, path_mass: Tensor, paths: Sequence[tuple[int, ...]]) -> tuple[
        list[int], Tensor]:
    """The children of ``parent`` in creation order and the path mass through each."""
    children = sibling_order(tree, parent)
    position = {c: i for i, c in enumerate(children)}
    masses = torch.zeros(len(children), dtype=path_mass.dtype, device=path_mass.device)
    for row, path in enumerate(paths):
        if parent in path[:-1]:
            child = path[path.index(parent) + 1]
            masses[position[child]] += path_mass[row]
    return children, masses


def birth_delta(tree: ClusterTree, row: int, split: Tensor, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                prior: NormalGamma, gamma: float, data_weight: float = 1.0) -> Tensor:
    """ΔELBO of splitting full path ``row``'s leaf in two: datum n's share of the path goes to the
    old leaf with fraction ``split[n]``, the rest to a new last sibling.

    Only the leaf's node term, its sibling group's sticks and the entropy change; the ancestors
    emit what they emitted (the datum's level on the path is kept). ``data_weight``: ζ of the
    coarsened ELBO (:func:`tree_elbo`).
    """
    paths = tree.paths()
    leaf, parent = paths[row][-1], paths[row][-2]
    z_sq = z_loc.square() + z_var
    resp = data_weight * resp  # every datum's part weighs ζ, its entropy too (through path_weight)
    leaf_weight = resp[:, row, -1]
    weights = torch.stack([leaf_weight, leaf_weight * split, leaf_weight * (1 - split)], -1)
    count, sum_z, sum_z2 = _statistics(weights, z_loc, z_sq)
    node = _node_evidence(prior, count, sum_z, sum_z2)
    path_weight = resp[:, row, :].sum(-1)
    children, masses = _group_masses(tree, parent, resp.sum((0, 2)), paths)
    kept = float((path_weight * split).sum())
    new_masses = torch.cat([masses, masses.new_tensor([float(masses[children.index(leaf)]) - kept])])
    new_masses[children.index(leaf)] = kept
    sticks = _stick_term(new_masses, gamma) - _stick_term(masses, gamma)
    entropy = -(path_weight * (_xlogx(split) + _xlogx(1 - split))).sum()
    return node[1] + node[2] - node[0] + sticks + entropy


def merge_delta(tree: ClusterTree, keep_row: int, drop_row: int, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                prior: NormalGamma, gamma: float, data_weight: float = 1.0) -> Tensor:
    """ΔELBO of folding the leaf of full path ``drop_row`` into that of ``keep_row`` (sibling leaves):
    every datum's share of the dropped path goes to the kept one, level by level. ``data_weight``:
    ζ of the coarsened ELBO (:func:`tree_elbo`)."""
    paths = tree.paths()
    keep, drop, parent = paths[keep_row][-1], paths[drop_row][-1], paths[keep_row][-2]
    if paths[drop_row][-2] != parent:
        raise ValueError(f"leaves {keep} and {drop} are not siblings")
    z_sq = z_loc.square() + z_var
    a, b = data_weight * resp[:, keep_row, -1], data_weight * resp[:, drop_row, -1]
    count, sum_z, sum_z2 = _statistics(torch.stack([a, b, a + b], -1), z_loc, z_sq)
    node = _node_evidence(prior, count, sum_z, sum_z2)
    children, masses = _group_masses(tree, parent, data_weight * resp.sum((0, 2)), paths)
    merged = masses.clone()
    merged[children.index(keep)] += masses[children.index(drop)]
    merged = torch.cat([merged[: children.index(drop)], merged[children.index(drop) + 1:]])
    sticks = _stick_term(merged, gamma) - _stick_term(masses, gamma)
    r1, r2 = resp[:, keep_row, :], resp[:, drop_row, :]
    entropy = data_weight * (_xlogx(r1) + _xlogx(r2) - _xlogx(r1 + r2)).sum()
    return node[2] - node[0] - node[1] + sticks + entropy


def refined_birth_delta(tree: ClusterTree, row: int, split: Tensor, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                        log_eta: Tensor, prior: NormalGamma, gamma: float, steps: int,
                        data_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """ΔELBO of a leaf birth after ``steps`` partial E-steps on the split path's data, before and
    after (:func:`refine_responsibilities`); both sides are refined alike, so what the E-steps
    improve in the current tree's ``q`` is not credited to the move. With ``steps=0`` it equals :func:`birth_delta`. Also returns the two leaves'
    refined leaf-level weights ``[N, 2]`` (old leaf, new leaf), to place their Gaussians."""
    paths = tree.paths()
    parent = paths[row][-2]
    grown = tree.copy(events=False)
    new_leaf = add_child_in_order(grown, parent)
    after_paths = grown.paths()
    columns = {path: resp[:, i] for i, path in enumerate(paths)}
    columns[paths[row][:-1] + (new_leaf,)] = resp[:, row] * (1 - split[:, None])
    columns[paths[row]] = resp[:, row] * split[:, None]
    after = torch.stack([columns[path] for path in after_paths], 1)
    pair = [after_paths.index(paths[row]), after_paths.index(paths[row][:-1] + (new_leaf,))]
    delta, after = _refined_delta(tree, resp, [row], grown, after, pair, z_loc, z_var, log_eta, prior, gamma, steps,
                                  data_weight)
    return delta, after[:, pair, -1]


def _refined_delta(tree: ClusterTree, before: Tensor, rows_before: Sequence[int], grown: ClusterTree,
                   after: Tensor, rows_after: Sequence[int], z_loc: Tensor, z_var: Tensor, log_eta: Tensor,
                   prior: NormalGamma, gamma: float, steps: int, data_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """``tree_elbo(grown, after) − tree_elbo(tree, before)`` after ``steps`` partial E-steps on the
    rows each side's move touches (:func:`refine_responsibilities`), and the refined ``after``
    (both at the coarsening ``data_weight``)."""
    before_nodes = torch.as_tensor(tree.paths(), dtype=torch.long, device=before.device)
    after_nodes = torch.as_tensor(grown.paths(), dtype=torch.long, device=after.device)
    before = refine_responsibilities(tree, before_nodes, rows_before, before, z_loc, z_var, log_eta, prior, steps,
                                     data_weight)
    after = refine_responsibilities(grown, after_nodes, rows_after, after, z_loc, z_var, log_eta, prior, steps,
                                    data_weight)
    z_sq = z_loc.square() + z_var
    structure = (_structure_elbo(grown, after_nodes, _cell_statistics(after, z_loc, z_sq, data_weight), prior, gamma)
                 - _structure_elbo(tree, before_nodes, _cell_statistics(before, z_loc, z_sq, data_weight), prior,
                                   gamma))
    # the paths neither side touches hold the same q on both: their entropy and level terms cancel
    rows_before, rows_after = list(rows_before), list(rows_after)
    data = _data_terms(after[:, rows_after], log_eta) - _data_terms(before[:, rows_before], log_eta)
    return structure + data_weight * data, after


def refined_merge_delta(tree: ClusterTree, keep_row: int, drop_row: int, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                        log_eta: Tensor, prior: NormalGamma, gamma: float, steps: int,
                        data_weight: float = 1.0) -> Tensor:
    """ΔELBO of a leaf merge (:func:`merge_delta`) after ``steps`` partial E-steps on the two paths
    before and on the merged one after — scored as :func:`refined_birth_delta` scores a birth, so
    that a birth and the merge that would undo it are judged by the same measure (with
    ``steps=0`` it equals :func:`merge_delta`)."""
    paths = tree.paths()
    drop = paths[drop_row][-1]
    merged = tree.copy(events=False)
    merged.remove_leaf(drop)
    columns = {path: resp[:, i] for i, path in enumerate(paths)}
    columns[paths[keep_row]] = resp[:, keep_row] + resp[:, drop_row]
    after_paths = merged.paths()
    after = torch.stack([columns[path] for path in after_paths], 1)
    delta, _ = _refined_delta(tree, resp, [keep_row, drop_row], merged, after, [after_paths.index(paths[keep_row])],
                              z_loc, z_var, log_eta, prior, gamma, steps, data_weight)
    return delta


def ancestor_birth_delta(tree: ClusterTree, parent: int, share: Tensor, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                         log_eta: Tensor, prior: NormalGamma, gamma: float, steps: int, data_weight: float = 1.0
                         ) -> tuple[Tensor, Tensor, ClusterTree, int]:
    """ΔELBO of a new leaf below ``parent`` (one level above the leaves) that takes, of every datum,
    the fraction ``share[n]`` of what the ancestors of ``parent``'s paths emit for it (their cells
    above the leaf level), after ``steps`` partial E-steps over all paths (both sides alike).

    The leaf birth of :func:`birth_delta` splits what a leaf emits; data a missing cluster leaves
    to the broad Gaussians of the root and the coarse nodes are seen by this move only. Returns
    the ΔELBO, the new leaf's refined leaf-level weights ``[N]``, the grown tree and the new id.
    """
    paths = tree.paths()
    rows = [row for row, path in enumerate(paths) if len(path) >= 2 and path[-2] == parent]
    grown = tree.copy(events=False)
    new_leaf = add_child_in_order(grown, parent)
    columns = {path: resp[:, i] for i, path in enumerate(paths)}
    ancestors = resp[:, rows, :-1]  # N x |rows| x (L-1)
    for i, row in enumerate(rows):
        column = resp[:, row].clone()
        column[:, :-1] = ancestors[:, i] * (1 - share[:, None])
        columns[paths[row]] = column
    born = torch.zeros_like(resp[:, 0])
    born[:, -1] = ancestors.sum((1, 2)) * share
    columns[paths[rows[0]][:-1] + (new_leaf,)] = born
    after_paths = grown.paths()
    after = torch.stack([columns[path] for path in after_paths], 1)
    born_row = after_paths.index(paths[rows[0]][:-1] + (new_leaf,))
    # the E-steps run over every path on both sides: data an ancestor emits may belong to a leaf
    # elsewhere in the tree, and a birth must not be credited with what moving them there would gain
    # (it would make a duplicate of that leaf, which a re-parent and a merge then undo, epoch after epoch)
    delta, after = _refined_delta(tree, resp, range(len(paths)), grown, after, range(len(after_paths)), z_loc, z_var,
                                  log_eta, prior, gamma, steps, data_weight)
    return delta, after[:, born_row, -1], grown, new_leaf


# coarse moves: the same leaves and q over (leaf, level), other internal nodes on the paths --------


def relabel_responsibilities(tree: ClusterTree, new_tree: ClusterTree, resp: Tensor) -> Tensor:
    """``resp [N, K, L]`` over ``tree.paths()`` reordered to ``new_tree.paths()`` (the same leaves)."""
    rows = {path[-1]: row for row, path in enumerate(tree.paths())}
    return resp[:, [rows[path[-1]] for path in new_tree.paths()]]


def split_internal_tree(tree: ClusterTree, node: int, moved: Sequence[int]) -> tuple[ClusterTree, int]:
    """A copy of ``tree`` in which a new sibling of ``node`` (last in creation order) adopts ``moved``."""
    new_tree = tree.copy(events=False)
    sibling = add_child_in_order(new_tree, new_tree.parent(node))
    for child in moved:
        new_tree.move(child, sibling)
    return new_tree, sibling


def merge_internal_tree(tree: ClusterTree, keep: int, drop: int) -> ClusterTree:
    """A copy of ``tree`` in which internal sibling ``drop``'s children move to ``keep``."""
    new_tree = tree.copy(events=False)
    new_tree.merge(keep, drop)
    return new_tree


def reparent_tree(tree: ClusterTree, node: int, new_parent: int) -> ClusterTree:
    """A copy of ``tree`` with ``node``'s subtree below ``new_parent``."""
    new_tree = tree.copy(events=False)
    new_tree.move(node, new_parent)
    return new_tree


def relabel_delta(tree: ClusterTree, new_tree: ClusterTree, resp: Tensor, z_loc: Tensor, z_var: Tensor,
                  log_eta: Tensor, prior: NormalGamma, gamma: float, base: Tensor | None = None,
                  data_weight: float = 1.0) -> Tensor:
    """ΔELBO of a coarse move (``new_tree`` has the same leaves; every datum keeps its ``q`` over
    (leaf, level), so what an internal node emitted for a moved subtree's data is emitted by the
    subtree's new ancestor). Exact: only the node and stick terms change, the entropy and level
    terms do not. ``base``: ``tree``'s ELBO (at the same coarsening ``data_weight``), when already known."""
    cells = _cell_statistics(resp, z_loc, z_loc.square() + z_var, data_weight)
    after = _relabelled_structure_elbo(tree, new_tree, cells, prior, gamma)
    if base is None:  # the entropy and level terms are the same on both sides
        return after - _structure_elbo(tree, torch.as_tensor(tree.paths(), device=resp.device), cells, prior, gamma)
    return after + data_weight * _data_terms(resp, log_eta) - base


def _relabelled_structure_elbo(tree: ClusterTree, new_tree: ClusterTree, cells: tuple[Tensor, Tensor, Tensor],
                               prior: NormalGamma | TreeNodePrior, gamma: float) -> Tensor:
    """:func:`_structure_elbo` of ``new_tree`` (the same leaves) from ``tree``'s cell statistics."""
    rows = {path[-1]: row for row, path in enumerate(tree.paths())}
    levels = cells[0].shape[0] // len(rows)
    new_paths = new_tree.paths()
    order = torch.as_tensor([rows[path[-1]] for path in new_paths], device=cells[0].device)
    cells = tuple(c.reshape(len(rows), levels, *c.shape[1:])[order].reshape(c.shape) for c in cells)
    return _structure_elbo(new_tree, torch.as_tensor(new_paths, device=order.device), cells, prior, gamma)


def emission_weights(tree: ClusterTree, resp: Tensor) -> dict[int, Tensor]:
    """What each node emits for each datum, ``{node: [N]}`` (``Σ`` of its (path, level) cells)."""
    n, k, levels = resp.shape
    onehot, nodes = _emission_matrix(tree, torch.as_tensor(tree.paths(), device=resp.device), resp.dtype, resp.device)
    weights = resp.reshape(n, k * levels) @ onehot
    return {node: weights[:, i] for i, node in enumerate(nodes)}


def subtree_weights(tree: ClusterTree, node: int, resp: Tensor) -> Tensor:
    """Each datum's mass on the cells of ``node``'s subtree (the paths through it, from its level down), ``[N]``."""
    level = tree.level(node)
    rows = [row for row, path in enumerate(tree.paths()) if len(path) > level and path[level] == node]
    return resp[:, rows, level:].sum((1, 2))


@torch.no_grad()
def propose_split(z_loc: Tensor, z_var: Tensor, weight: Tensor, steps: int = 20) -> Tensor:
    """Fraction of each datum for the first of two diagonal Gaussians fitted to ``weight``-ed points.

    EM on ``E q(z|x)`` (each point's variance added to the components'), started from the sign of
    the projection on the weighted principal axis; ``steps`` EM iterations.
    """
    total = weight.sum().clamp_min(1e-12)
    mean = (weight[:, None] * z_loc).sum(0) / total
    centred = z_loc - mean
    cov = (weight[:, None] * centred).T @ centred / total
    axis = torch.linalg.eigh(cov)[1][:, -1]
    split = (centred @ axis > 0).to(z_loc.dtype)
    for _ in range(steps):
        parts = torch.stack([split, 1 - split], -1) * weight[:, None]  # N x 2
        mass = parts.sum(0).clamp_min(1e-8)
        locs = parts.T @ z_loc / mass[:, None]
        variances = (parts.T @ (z_loc.square() + z_var) / mass[:, None] - locs.square()).clamp_min(1e-6)
        log_p = (mass / mass.sum()).log() - 0.5 * (
            variances.log()[None] + ((z_loc[:, None, :] - locs[None]).square() + z_var[:, None, :]) / variances[None]
        ).sum(-1)
        split = torch.softmax(log_p, -1)[:, 0]
    return split


class ELBOStructureMoves(Callback):
    """Leaf births and merges accepted only when they raise the ELBO (see the module docstring).

    Needs a model with a ``tree``, an ``encoder`` returning ``(loc, scale)`` of ``q(z|x)``,
    ``joint_log_responsibilities(x, z)`` (``B x K x L`` over the full paths), ``level_log_proportions(x)``,
    ``path_index()``, ``split_leaf(leaf, keep, new)``, ``merge_leaves(keep, drop, merged)`` (targets:
    ``(mean, std)`` in the embedding) and optionally ``reset_node_optimizer_state(optimizer)``.

    Parameters
    ----------
    stick_concentration:
        γ of the sticks' Beta(1, γ) prior (the model's).
    lock_epochs:
        Epochs the tree is left alone at the start and after each epoch that changed it.
    max_leaves:
        No birth while the tree has this many leaves.
    capacity:
        The model's node capacity: no birth that would exceed it.
    min_mass:
        A leaf holding less mass than this is not split, and is offered to its heaviest sibling
        as a merge every epoch (kept if the ELBO rises: a delete).
    merge_pairs:
        How many sibling pairs (nearest by symmetrised KL of their Gaussians) are tried per epoch.
    prior_precision_scale, prior_concentration, prior_variance_fraction:
        The nodes' Normal–Gamma prior (:func:`node_prior`).
    split_steps:
        EM steps refining a birth proposal.
    birth_margin:
        A birth is accepted when its ΔELBO exceeds this many nats (0: whenever it raises the ELBO).
        The embedding moves between epochs, so a birth that only just pays can be undone by a merge
        a few epochs later, and the two then alternate.
    ancestor_births:
        Also propose, below every node one level above the leaves, a new leaf from the data its
        paths' ancestors emit (:func:`ancestor_birth_delta`): a cluster no leaf covers is left to
        the broad Gaussians of the root and coarse nodes, where no leaf birth can see it.
    mean_coupling:
        None (default): every node's Normal–Gamma prior is centred on the embedding's mean,
        independently. A number ``κ_c``: child means are centred on their parent's, with precision
        ``κ_c λ_child`` (:class:`TreeNodePrior`), so that grouping leaves under a parent of their
        own can raise the ELBO even where the internal nodes emit nothing; the coarse moves are then
        tried first in every epoch, the leaf moves after them. ``"auto"``: ``κ_c = 1`` on data the
        moves score uncoarsened (``coarsening`` None, or N ≤ α) and :data:`COARSENED_MEAN_COUPLING`
        on coarsened data (:meth:`mean_coupling_for`).
    mean_coupling_shape:
        None (default): ``κ_c`` is the coupling of every parent. A number ``a``: each level's
        coupling is learnt, ``κ_l ~ Gamma(a, a / κ_c)`` (prior mean ``κ_c``) with its conjugate
        ``q(κ_l)`` found with the nodes' (:class:`TreeNodePrior`), so that every proposed grouping
        is scored at the coupling its own children support. Needs ``mean_coupling``.
    closed_form_sticks:
        At the end of every epoch (moves or not), set the model's sticks to their conjugate update
        :func:`conjugate_sticks` from the epoch's memoized responsibilities, through
        ``set_stick_posteriors(sticks)``; the model then keeps them out of its SVI steps. After an
        epoch that changed the tree they are updated once more, from one E-step on the new tree
        (its Gaussians as the moves placed them, no path prior; :meth:`_placed_responsibilities`).
        Default False: the sticks train by SVI with the rest of the guide.
    closed_form_nodes:
        At the end of every epoch, set every node's Gaussian to its conjugate posterior
        (:func:`conjugate_nodes`) from the epoch's memoized statistics, through
        ``set_node_gaussians(gaussians)``; the model then keeps them out of its SVI steps (memoized
        VI's global step for the nodes). Default False: they train by SVI between the moves.
    coarse_moves:
        In an epoch without leaf moves, try the coarse moves (split and merge of internal nodes,
        re-parenting) and keep the best if it raises the ELBO (exact in closed form,
        :func:`relabel_delta`).
    refine_steps:
        Partial E-steps over (path, level) on the split path's data, before and after a birth,
        before the ΔELBO is read (:func:`refined_birth_delta`): data emitted by an ancestor may
        move to the new leaves.
    encoder_variance:
        Whether the statistics use ``E z² = z̄² + s²`` of the encoder's ``q(z|x)`` (the ELBO at the
        current encoder) or treat ``z̄ = E q(z|x)`` as observed points (default). The encoder's
        variance follows the prior: before a split it is as wide as the unsplit node (on
        three separated blobs, s ≈ 0.84 against clusters 0.2–0.3 wide), so at its pre-move value
        the ELBO undervalues every split, while after the move SVI shrinks it. The default scores
        the structure the embedding supports, as k-means + Ward on ``E q(z|x)`` does.
    coarsening:
        None (default): the moves are scored on the ELBO. A number α: on the coarsened ELBO
        (:func:`tree_elbo`; Miller & Dunson 2019) with every datum weighing ζ = min(1, α / N) for
        the epoch's N data, so the search keeps the components that α points would support. Miller
        & Dunson's ζ = α / (α + N) gives the same effective sample size N·ζ ≈ α where N ≫ α (the
        two differ by a factor 1 + α / N: 1.7 % on MNIST's 60,000 training digits at α = 1000); the cap differs
        where N is not large: data of at most α points are scored on the ELBO itself, so one α
        coarsens a large data set and leaves a small one alone (theirs weighs the 1,797 digits
        0.36 at α = 1000 and 0.63 at α = 3000). The
        Normal–Gamma nodes' Occam factor grows like log N while a split of a cluster that is not
        quite Gaussian gains in proportion to N, so at ζ = 1 the number of leaves grows with the
        data (on all of MNIST, to the node capacity). Only the structure decisions are coarsened;
        the closed-form node and stick updates and the SVI steps see every datum at full weight.
    """

    def __init__(self, stick_concentration: float = 1.0, lock_epochs: int = 1, max_leaves: int | None = None,
                 capacity: int | None = None, min_mass: float = 10.0, merge_pairs: int = 10,
                 prior_precision_scale: float = 0.1, prior_concentration: float = 1.0,
                 prior_variance_fraction: float = 0.1, split_steps: int = 20,
                 encoder_variance: bool = False, refine_steps: int = 3, birth_margin: float = 0.0,
                 ancestor_births: bool = True, coarse_moves: bool = True, mean_coupling: float | str | None = None,
                 closed_form_sticks: bool = False, closed_form_nodes: bool = False,
                 coarsening: float | None = None, mean_coupling_shape: float | None = None) -> None:
        if stick_concentration <= 0:
            raise ValueError(f"stick_concentration must be positive, got {stick_concentration}")
        if lock_epochs < 0 or merge_pairs < 0 or split_steps < 1 or min_mass < 0:
            raise ValueError("need lock_epochs >= 0, merge_pairs >= 0, split_steps >= 1, min_mass >= 0")
        for name, value in (("prior_precision_scale", prior_precision_scale),
                            ("prior_concentration", prior_concentration),
                            ("prior_variance_fraction", prior_variance_fraction)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.stick_concentration = float(stick_concentration)
        self.lock_epochs = int(lock_epochs)
        self.max_leaves = max_leaves
        self.capacity = capacity
        self.min_mass = float(min_mass)
        self.merge_pairs = int(merge_pairs)
        self.prior_settings = dict(precision_scale=float(prior_precision_scale),
                                   concentration=float(prior_concentration),
                                   variance_fraction=float(prior_variance_fraction))
        self.split_steps = int(split_steps)
        self.encoder_variance = bool(encoder_variance)
        if refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
        self.refine_steps = int(refine_steps)
        if not birth_margin >= 0:
            raise ValueError(f"birth_margin must be >= 0, got {birth_margin}")
        self.birth_margin = float(birth_margin)
        self.ancestor_births = bool(ancestor_births)
        self.coarse_moves = bool(coarse_moves)
        if mean_coupling is not None and mean_coupling != "auto" and (
                isinstance(mean_coupling, (str, bool)) or not mean_coupling > 0):
            raise ValueError(f"mean_coupling must be positive, 'auto' (1, or {COARSENED_MEAN_COUPLING} on coarsened "
                             f"data) or None (independent node means), got {mean_coupling!r}")
        self.mean_coupling = mean_coupling if mean_coupling in (None, "auto") else float(mean_coupling)
        if mean_coupling_shape is not None and (mean_coupling is None or not mean_coupling_shape > 0):
            raise ValueError("mean_coupling_shape needs a mean_coupling (the prior mean of the learnt couplings) and "
                             f"must be positive, got {mean_coupling_shape} with mean_coupling={mean_coupling}")
        self.mean_coupling_shape = None if mean_coupling_shape is None else float(mean_coupling_shape)
        self.closed_form_sticks = bool(closed_form_sticks)
        self.closed_form_nodes = bool(closed_form_nodes)
        if coarsening is not None and not 0 < coarsening < math.inf:
            raise ValueError(f"coarsening must be positive and finite (or None: the ELBO itself), got {coarsening}")
        self.coarsening = None if coarsening is None else float(coarsening)
        self.data_weight = 1.0  # ζ of the epoch being scored (data_weight_for)
        self.lock_counter = 0
        self._buffers: dict[str, Tensor] | None = None
        self._version: int | None = None

    def on_epoch_start(self, state: FitState) -> None:
        self._buffers, self._version = None, None

    def node_prior(self, z_loc: Tensor, z_var: Tensor) -> NormalGamma | TreeNodePrior:
        """The nodes' prior the moves score with, from the embedding: :func:`node_prior`, with child
        means centred on the parent's under ``mean_coupling`` (:class:`TreeNodePrior`)."""
        prior = node_prior(z_loc, z_var, **self.prior_settings)
        coupling = self.mean_coupling_for(z_loc.shape[0])
        if coupling is None:
            return prior
        return TreeNodePrior(prior, coupling, coupling_shape=self.mean_coupling_shape)

    def mean_coupling_for(self, num_data: int) -> float | None:
        """``κ_c`` the moves score ``num_data`` points with: ``mean_coupling`` as given, or under
        ``"auto"`` 1 where ζ = 1 and :data:`COARSENED_MEAN_COUPLING` where the data are coarsened."""
        if self.mean_coupling != "auto":
            return self.mean_coupling
        return COARSENED_MEAN_COUPLING if self.data_weight_for(num_data) < 1 else 1.0

    def data_weight_for(self, num_data: int) -> float:
        """ζ = min(1, α / N) of the coarsened ELBO the moves score on ``num_data`` points (1 without ``coarsening``)."""
        return 1.0 if self.coarsening is None else min(1.0, self.coarsening / num_data)

    @torch.no_grad()
    def on_step_end(self, state: FitState) -> None:
        module, x = state.module, state.batch_x
        if self._version is not None and module.tree.version != self._version:
            raise RuntimeError("the tree changed during the epoch; ELBOStructureMoves edits it at epoch end only")
        loc, scale = module.encoder(x)
        joint = module.joint_log_responsibilities(x, z=loc)  # B x K x L over the full paths
        resp = torch.softmax(joint.reshape(joint.shape[0], -1), -1).reshape(joint.shape)
        log_eta = module.level_log_proportions(x)
        z_var = scale.square() if self.encoder_variance else torch.zeros_like(scale)
        rows = {"z_loc": loc, "z_var": z_var, "resp": resp, "log_eta": log_eta}
        if self.closed_form_nodes and not self.encoder_variance:  # the nodes' global step reads q(z|x)'s
            rows["encoder_var"] = scale.square()  # variance whatever the moves read (else z_var is it)
        if self._buffers is None:
            n = int(state.num_data)
            self._buffers = {name: torch.zeros((n, *value.shape[1:]), dtype=value.dtype, device=value.device)
                             for name, value in rows.items()}
            self._buffers["seen"] = torch.zeros(n, dtype=torch.bool, device=loc.device)
            self._version = module.tree.version
        index = state.batch_index.to(device=loc.device, dtype=torch.long)
        for name, value in rows.items():
            self._buffers[name].index_copy_(0, index, value)
        self._buffers["seen"][index] = True

    @torch.no_grad()
    def on_epoch_end(self, state: FitState) -> None:
        if self._buffers is None:
            return
        module = state.module
        tree = module.tree
        if tree.version != self._version:
            raise RuntimeError("the tree changed after the epoch's last step; the statistics no longer match it")
        if distributed.is_distributed():  # each datum was seen by one rank: the sums are the whole epoch's
            seen = self._buffers["seen"].to(self._buffers["z_loc"].dtype)
            distributed.all_reduce_sum_(seen, *(self._buffers[name] for name in ("z_loc", "z_var", "resp", "log_eta",
                                                                                 "encoder_var") if name in self._buffers))
            self._buffers["seen"] = seen > 0
        seen = self._buffers["seen"]
        # Scored in float64: a move's ΔELBO is a difference of two whole-tree ELBOs of order N·d nats,
        # and in float32 it was off by ~2 nats for a birth on 18,846 points (−43.2 against −41.3).
        # The module's parameters take the placed Gaussians and sticks back in their own dtype.
        z_loc, z_var, resp = (self._buffers[name][seen].double() for name in ("z_loc", "z_var", "resp"))
        self.data_weight = self.data_weight_for(z_loc.shape[0])
        prior = self.node_prior(z_loc, z_var)
        if self.closed_form_sticks:  # the sticks' global step, on the tree the epoch's statistics belong to
            module.set_stick_posteriors(conjugate_sticks(tree, resp, self.stick_concentration))
        if self.closed_form_nodes:  # the nodes' global step; the moves below place the nodes they change
            # E z² = z̄² + s²: the point Gaussians the SVI steps would fit to z ~ q(z|x). From z̄ alone the
            # spreads shrink, the encoder pulls z̄ onto the narrower nodes, and the embedding collapses
            encoder_var = self._buffers["encoder_var"][seen].double() if "encoder_var" in self._buffers else z_var
            module.set_node_gaussians(conjugate_nodes(tree, resp, z_loc, encoder_var, prior))
        if self.lock_counter < self.lock_epochs:
            self.lock_counter += 1
            state.logs.update(n_paths=float(len(tree.leaves())), births=0.0, merges=0.0, coarse_moves=0.0)
            return
        gamma = self.stick_concentration
        paths = tree.paths()
        epoch, step = state.epoch, state.step
        log_eta = self._buffers["log_eta"][seen].double()
        # With child means centred on the parent's, the coarse moves have evidence of their own: they are
        # tried first, every epoch (leaf moves go on for most of a fit and would starve them). A coarse
        # move keeps every datum's q over (leaf, level), so the leaf moves then go on in the same epoch on
        # the relabelled responsibilities. With independent node priors leaf data cannot tell groups
        # apart, so they are tried only in an epoch without leaf moves.
        coarse = 0
        if self.coarse_moves and self.mean_coupling is not None:
            before = tree.copy(events=False)
            coarse = self._coarse(module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma, epoch, step)
            if coarse:
                tree = module.tree
                resp, paths = relabel_responsibilities(before, tree, resp), tree.paths()
        merges = self._merge(module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma, epoch, step)
        births = 0 if merges else self._births(module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma,
                                               epoch, step)
        if self.coarse_moves and self.mean_coupling is None and not (merges or births):
            coarse = self._coarse(module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma, epoch, step)
        changed = bool(births or merges or coarse)
        if changed and self.closed_form_sticks:
            # the moved nodes' sticks would otherwise be stale for an epoch (a split leaf's, fitted to all
            # of its former mass, starves its new sibling): one E-step on the new tree, its Gaussians as
            # the moves placed them and no path prior, then the sticks' update from it
            module.set_stick_posteriors(conjugate_sticks(module.tree, self._placed_responsibilities(
                module, z_loc, log_eta), self.stick_concentration))
        if changed:
            self.lock_counter = 0
            reset = getattr(module, "reset_node_optimizer_state", None)
            optimizer = getattr(state.engine, "optimizer", None)
            if reset is not None and optimizer is not None:
                reset(optimizer)
        state.logs.update(n_paths=float(len(module.tree.leaves())), births=float(births), merges=float(merges),
                          coarse_moves=float(coarse))

    @staticmethod
    def _placed_responsibilities(module, z_loc: Tensor, log_eta: Tensor, chunk: int = 4096) -> Tensor:
        """``q(ζ_n, l_n)`` on the module's current tree and node Gaussians with a flat prior over its
        full paths (and the epoch's level proportions), ``[N, K, L]`` in ``tree.paths()`` order."""
        paths = module.path_index()
        node = paths.path_nodes[: paths.n_full]
        locs, scales = module.node_locs[node].to(z_loc), module.node_scales[node].to(z_loc)  # K x L x d
        log_eta = log_eta.expand(z_loc.shape[0], node.shape[1])
        parts = []
        for start in range(0, z_loc.shape[0], chunk):
            z = z_loc[start:start + chunk, None, None, :]
            joint = torch.distributions.Normal(locs, scales).log_prob(z).sum(-1) + log_eta[start:start + chunk, None, :]
            parts.append(torch.softmax(joint.reshape(joint.shape[0], -1), -1).reshape(joint.shape))
        return torch.cat(parts)

    # the moves ---------------------------------------------------------------------------------

    @staticmethod
    def _posterior_gaussian(prior: NormalGamma, weight: Tensor, z_loc: Tensor, z_var: Tensor) -> tuple[Tensor, Tensor]:
        count, sum_z, sum_z2 = _statistics(weight[:, None], z_loc, z_loc.square() + z_var)
        post = prior.posterior(count[:, None], sum_z, sum_z2)
        return post.loc[0], (post.rate / post.concentration).sqrt()[0]  # mean, E[1/λ]^{1/2}-ish spread

    def _births(self, module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma, epoch, step) -> int:
        leaf_room = None if self.max_leaves is None else self.max_leaves - len(paths)
        proposals: list[tuple[float, int, Tensor]] = []
        for row, path in enumerate(paths):
            weight = resp[:, row, -1]
            if float(weight.sum()) < self.min_mass:
                continue
            split = propose_split(z_loc, z_var, weight, self.split_steps)
            delta, weights = refined_birth_delta(tree, row, split, resp, z_loc, z_var, log_eta, prior, gamma,
                                                 self.refine_steps, self.data_weight)
            proposals.append((float(delta), row, weights))
        if self.ancestor_births:
            levels = resp.shape[-1]
            for parent in tree.internal_nodes():
                if tree.level(parent) != levels - 2:
                    continue
                rows = [row for row, path in enumerate(paths) if path[-2] == parent]
                emitted = resp[:, rows, :-1].sum((1, 2))  # what the ancestors emit on parent's paths
                if float(emitted.sum()) < self.min_mass:
                    continue
                split = propose_split(z_loc, z_var, emitted, self.split_steps)
                share = split if self._spread(z_loc, z_var, emitted * split) <= self._spread(
                    z_loc, z_var, emitted * (1 - split)) else 1 - split  # the tighter half: a missing cluster
                delta, weight, _, _ = ancestor_birth_delta(tree, parent, share, resp, z_loc, z_var, log_eta, prior,
                                                           gamma, self.refine_steps, self.data_weight)
                proposals.append((float(delta), -1 - parent, weight[:, None]))
        proposals.sort(key=lambda item: -item[0])
        births = 0
        # an ancestor birth and a leaf birth below the same parent may claim the same data (the
        # E-steps let both take what the ancestors emit): in one epoch, a parent gets either one
        # ancestor birth or any number of leaf births, whichever comes first by ΔELBO
        ancestor_parents, leaf_parents = set(), set()
        for delta, row, weights in proposals:
            room = (leaf_room is None or births < leaf_room) and (
                self.capacity is None or len(module.tree) < self.capacity)
            parent = -1 - row if row < 0 else paths[row][-2]
            conflict = parent in ancestor_parents or (row < 0 and parent in leaf_parents)
            accepted = delta > self.birth_margin and room and not conflict
            if accepted:
                (ancestor_parents if row < 0 else leaf_parents).add(parent)
            if row < 0:  # an ancestor birth below node -1 - row
                new_leaf = None
                if accepted:
                    new_leaf = module.add_leaf(parent, self._posterior_gaussian(prior, weights[:, 0], z_loc, z_var))
                    births += 1
                module.tree.log_event("ancestor_birth", [parent] if new_leaf is None else [parent, new_leaf],
                                      epoch=epoch, step=step, parent=parent, delta_elbo=delta, accepted=accepted)
                continue
            leaf = paths[row][-1]
            new_leaf = None
            if accepted:
                keep = self._posterior_gaussian(prior, weights[:, 0], z_loc, z_var)
                new = self._posterior_gaussian(prior, weights[:, 1], z_loc, z_var)
                new_leaf = module.split_leaf(leaf, keep, new)
                births += 1
            module.tree.log_event("birth", [leaf] if new_leaf is None else [leaf, new_leaf], epoch=epoch, step=step,
                                  leaf=leaf, delta_elbo=delta, accepted=accepted)
        return births

    @staticmethod
    def _spread(z_loc: Tensor, z_var: Tensor, weight: Tensor) -> float:
        """Total weighted variance of the points (``E z²`` minus the squared mean, summed over coordinates)."""
        total = weight.sum().clamp_min(1e-12)
        mean = weight @ z_loc / total
        return float((weight @ (z_loc.square() + z_var) / total - mean.square()).sum())

    def _coarse(self, module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma, epoch, step) -> int:
        """The best coarse move, if it raises the ELBO: split an internal node (a new sibling adopts
        some of its children, grouped by 2-means of the children's subtree means), merge two internal
        siblings, or re-parent a subtree to another internal node of its parent's level. Each is
        exact in closed form (:func:`relabel_delta`)."""
        levels = resp.shape[-1]
        device = resp.device
        # every candidate keeps each datum's q over (leaf, level): only the node and stick terms
        # change, and they are read from the cells' statistics, summed over the data once
        cells = _cell_statistics(resp, z_loc, z_loc.square() + z_var, self.data_weight)
        base = _structure_elbo(tree, torch.as_tensor(paths, device=device), cells, prior, gamma)
        candidates: list[tuple[float, str, dict]] = []

        def consider(kind: str, new_tree: ClusterTree, **info) -> None:
            delta = float(_relabelled_structure_elbo(tree, new_tree, cells, prior, gamma) - base)
            candidates.append((delta, kind, dict(info, new_tree=new_tree)))

        coarse = [u for u in tree.internal_nodes() if 1 <= tree.level(u) <= levels - 2]
        room = self.capacity is None or len(tree) < self.capacity
        for node in coarse:  # split
            children = tree.children(node)
            if len(children) < 2 or not room:
                continue
            weights = torch.stack([subtree_weights(tree, child, resp) for child in children], 1)  # N x C
            mass = weights.sum(0)
            if float(mass.min()) <= 0:
                continue
            means = weights.T @ z_loc / mass[:, None]
            side = propose_split(means, torch.zeros_like(means), mass) > 0.5
            moved = [child for child, s in zip(children, side.tolist()) if not s]
            if 0 < len(moved) < len(children):
                new_tree, sibling = split_internal_tree(tree, node, moved)
                consider("split_internal", new_tree, node=node, moved=moved, new_node=sibling)
        subtree_mass = {u: float(subtree_weights(tree, u, resp).sum()) for u in coarse}
        for parent in tree.internal_nodes():  # merge
            group = [u for u in tree.children(parent) if u in subtree_mass]
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    keep, drop = (a, b) if subtree_mass[a] >= subtree_mass[b] else (b, a)
                    consider("merge_internal", merge_internal_tree(tree, keep, drop), keep=keep, drop=drop)
        for node in tree.nodes():  # re-parent
            parent = tree.parent(node)
            if parent is None or parent not in coarse or len(tree.children(parent)) < 2:
                continue
            for target in coarse:
                if target != parent and tree.level(target) == tree.level(parent):
                    consider("reparent", reparent_tree(tree, node, target), node=node, old_parent=parent,
                             new_parent=target)
        if not candidates:
            return 0
        best = max(candidates, key=lambda item: item[0])
        accept = best[0] > 0
        if accept:
            delta, kind, info = best
            new_tree = info["new_tree"]
            after = relabel_responsibilities(tree, new_tree, resp)
            emitted = emission_weights(new_tree, after)
            if kind == "split_internal":
                changed = [info["node"], info["new_node"]]
            elif kind == "merge_internal":
                changed = [info["keep"]]
            else:
                changed = [info["old_parent"], info["new_parent"]]
            gaussians = {node: self._posterior_gaussian(prior, emitted[node], z_loc, z_var) for node in changed}
            if kind == "split_internal":
                new_node = module.split_internal(info["node"], info["moved"], gaussians)
                if new_node != info["new_node"]:
                    raise RuntimeError(f"split_internal made node {new_node}, expected {info['new_node']}")
            elif kind == "merge_internal":
                module.merge_internal(info["keep"], info["drop"], gaussians)
            else:
                module.reparent(info["node"], info["new_parent"], gaussians)
        for candidate in candidates:
            delta, kind, info = candidate
            nodes = [value for key, value in info.items() if key in ("node", "keep", "drop", "new_parent")]
            extra = {key: value for key, value in info.items() if key != "new_tree"}
            module.tree.log_event(kind, nodes, epoch=epoch, step=step, delta_elbo=delta,
                                  accepted=bool(accept and candidate is best), **extra)
        return int(accept)

    def _merge(self, module, tree, paths, resp, z_loc, z_var, log_eta, prior, gamma, epoch, step) -> int:
        if self.merge_pairs == 0:
            return 0
        pairs = []
        for parent in tree.internal_nodes():
            rows = [row for row, path in enumerate(paths) if len(path) >= 2 and path[-2] == parent]
            for i, a in enumerate(rows):
                for b in rows[i + 1:]:
                    pairs.append((a, b))
        if not pairs:
            return 0
        # nearest pairs by the symmetrised KL of the leaves' current Gaussians
        means, spreads = [], []
        for row in range(len(paths)):
            mean, spread = self._posterior_gaussian(prior, resp[:, row, -1], z_loc, z_var)
            means.append(mean)
            spreads.append(spread)
        means, var = torch.stack(means), torch.stack(spreads).square()
        a_rows = torch.as_tensor([a for a, _ in pairs])
        b_rows = torch.as_tensor([b for _, b in pairs])
        diff = (means[a_rows] - means[b_rows]).square()
        sym_kl = 0.5 * ((var[a_rows] + diff) / var[b_rows] + (var[b_rows] + diff) / var[a_rows] - 2).sum(-1)
        order = torch.argsort(sym_kl)[: self.merge_pairs].tolist()
        # a leaf holding less than ``min_mass`` is also offered to its heaviest sibling (a delete): its
        # Gaussian sits near the prior, far from every sibling by the KL, so the nearest pairs miss it
        mass = resp.sum((0, 2)).tolist()
        pair_index = {pair: index for index, pair in enumerate(pairs)}
        for light, path in enumerate(paths):
            siblings = [row for row, other in enumerate(paths) if other[-2] == path[-2] and row != light]
            if mass[light] >= self.min_mass or not siblings:
                continue
            heaviest = max(siblings, key=lambda row: mass[row])
            index = pair_index[(min(light, heaviest), max(light, heaviest))]
            if index not in order:
                order.append(index)
        candidates = []
        for index in order:
            a, b = pairs[index]
            keep_row, drop_row = (a, b) if float(resp[:, a].sum()) >= float(resp[:, b].sum()) else (b, a)
            delta = float(refined_merge_delta(tree, keep_row, drop_row, resp, z_loc, z_var, log_eta, prior, gamma,
                                              self.refine_steps, self.data_weight))
            candidates.append((delta, paths[keep_row][-1], paths[drop_row][-1], keep_row, drop_row))
        best = max(candidates, key=lambda item: item[0])
        accept = best[0] > 0
        if accept:
            _, keep, drop, keep_row, drop_row = best
            merged = self._posterior_gaussian(prior, resp[:, keep_row, -1] + resp[:, drop_row, -1], z_loc, z_var)
            module.merge_leaves(keep, drop, merged)
        for candidate in candidates:
            delta, keep, drop = candidate[:3]
            module.tree.log_event("merge", [keep, drop], epoch=epoch, step=step, keep=keep, drop=drop,
                                  delta_elbo=delta, accepted=bool(accept and candidate is best))
        return int(accept)

    # persistence --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"lock_counter": self.lock_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lock_counter = int(state["lock_counter"])

"""ELBO-tested coarse moves of HCRL's structure search: exact ΔELBOs, tree edits and the module's edits."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Gamma, Normal

from pyro_hc.distributions import NormalGamma, add_child_in_order
from pyro_hc.heuristics.elbo_moves import (TreeNodePrior, _tree_node_elbo, ancestor_birth_delta, birth_delta,
                                           merge_internal_tree, node_prior, relabel_delta, relabel_responsibilities,
                                           reparent_tree, split_internal_tree, tree_elbo, tree_node_posterior)
from pyro_hc.models._ncrp import chain_tree
from pyro_hc.tree import ClusterTree
from .test_hcrl import brute_force_tree_elbo


def two_group_problem(seed=0, n=9):
    """Depth 3: root 0 -> coarse 1 -> leaves 2, 3, 4 and root -> coarse 5 -> leaf 6 (creation order),
    random responsibilities over the 4 full paths x 3 levels, float64."""
    generator = torch.Generator().manual_seed(seed)
    tree = chain_tree(3)  # 0 -> 1 -> 2
    add_child_in_order(tree, 1)  # 3
    add_child_in_order(tree, 1)  # 4
    coarse = add_child_in_order(tree, 0)  # 5
    add_child_in_order(tree, coarse)  # 6
    resp = torch.rand(n, 4, 3, generator=generator, dtype=torch.float64) + 0.05
    resp = resp / resp.sum((1, 2), keepdim=True)
    z_loc = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    z_var = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.3 + 0.05
    log_eta = torch.log_softmax(torch.randn(n, 3, generator=generator, dtype=torch.float64), -1)
    prior = NormalGamma(torch.tensor([0.1, -0.2], dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64),
                        torch.tensor(1.5, dtype=torch.float64), torch.tensor([0.7, 1.2], dtype=torch.float64))
    return tree, resp, z_loc, z_var, log_eta, prior, 1.3


@pytest.mark.parametrize("data_weight", [1.0, 0.3])  # 0.3: the coarsened ELBO (tests/test_coarsening.py)
@pytest.mark.parametrize("move", ["split_internal", "merge_internal", "reparent"])
def test_coarse_move_delta_elbo_equals_the_difference_of_brute_force_elbos(move, data_weight):
    tree, resp, z_loc, z_var, log_eta, prior, gamma = two_group_problem(1)
    if move == "split_internal":
        new_tree, sibling = split_internal_tree(tree, 1, [3, 4])
        assert new_tree.parent(3) == new_tree.parent(4) == sibling and new_tree.parent(sibling) == 0
        assert new_tree.children(1) == [2]
    elif move == "merge_internal":
        new_tree = merge_internal_tree(tree, 1, 5)
        assert new_tree.children(1) == [2, 3, 4, 6] and 5 not in new_tree
    else:
        new_tree = reparent_tree(tree, 4, 5)
        assert new_tree.children(5) == [4, 6]
    assert tree.children(1) == [2, 3, 4]  # the copy was edited, not the tree
    delta = relabel_delta(tree, new_tree, resp, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight)
    after = relabel_responsibilities(tree, new_tree, resp)
    expected = (brute_force_tree_elbo(new_tree, after, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight)
                - brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight))
    assert float(delta) == pytest.approx(float(expected), rel=1e-8, abs=1e-8)
    assert abs(float(delta)) > 1e-3  # the move changes the ELBO: the check above is not vacuous


@pytest.mark.parametrize("data_weight", [1.0, 0.3])
def test_ancestor_birth_delta_without_refinement_equals_the_difference_of_brute_force_elbos(data_weight):
    tree, resp, z_loc, z_var, log_eta, prior, gamma = two_group_problem(2)
    share = torch.rand(resp.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    delta, weight, grown, new_leaf = ancestor_birth_delta(tree, 1, share, resp, z_loc, z_var, log_eta, prior, gamma,
                                                          steps=0, data_weight=data_weight)
    # by hand: the paths below node 1 give `share` of their root- and coarse-level cells to the new leaf
    rows = {path: resp[:, k].clone() for k, path in enumerate(tree.paths())}
    taken = torch.zeros(resp.shape[0], dtype=resp.dtype)
    for path in [(0, 1, 2), (0, 1, 3), (0, 1, 4)]:
        taken += rows[path][:, :-1].sum(-1) * share
        rows[path][:, :-1] *= (1 - share)[:, None]
    rows[(0, 1, new_leaf)] = torch.stack([torch.zeros_like(taken), torch.zeros_like(taken), taken], -1)
    after = torch.stack([rows[path] for path in grown.paths()], 1)
    assert torch.allclose(after.sum((1, 2)), torch.ones(resp.shape[0], dtype=resp.dtype))
    assert torch.allclose(weight, taken)
    expected = (brute_force_tree_elbo(grown, after, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight)
                - brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight))
    assert float(delta) == pytest.approx(float(expected), rel=1e-8, abs=1e-8)


def two_groups_of_two_leaves():
    """Depth 3: root 0 -> coarse 1 -> leaves 2, 3 (near (4, ·)) | 4, 5 (near (−4, ·)), creation order;
    returns the tree, the leaves' centres and ``per`` = 40 points per leaf."""
    tree = chain_tree(3)  # 0 -> 1 -> 2
    for _ in range(3):
        add_child_in_order(tree, 1)  # 3, 4, 5
    return tree, torch.tensor([[4.0, 0.0], [4.0, 1.0], [-4.0, 0.0], [-4.0, 1.0]]), 40


def test_coarse_split_raises_the_elbo_only_along_the_data_groups():
    """Two groups of two leaves under one coarse node, every node emitting (the coarse node near each
    group's data): splitting the coarse node along the groups raises the ELBO, across them it does not."""
    generator = torch.Generator().manual_seed(0)
    tree, centres, per = two_groups_of_two_leaves()
    z_loc, resp_rows = [], []
    for leaf_row, centre in enumerate(centres):
        z_loc.append(centre + 0.2 * torch.randn(per, 2, generator=generator))  # emitted by the leaf
        z_loc.append(centre * torch.tensor([1.0, 0.0]) + 0.6 * torch.randn(per // 2, 2, generator=generator))  # by node 1
        for level, count in ((2, per), (1, per // 2)):
            cell = torch.zeros(count, 4, 3)
            cell[:, leaf_row, level] = 1.0
            resp_rows.append(cell)
    z_loc, resp = torch.cat(z_loc).double(), torch.cat(resp_rows).double()
    z_var = torch.zeros_like(z_loc)
    log_eta = torch.full((len(z_loc), 3), 1 / 3).log().double()
    prior = NormalGamma(torch.zeros(2, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64),
                        torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    base = tree_elbo(tree, torch.as_tensor(tree.paths()), resp, z_loc, z_var, log_eta, prior, 1.0)
    along, _ = split_internal_tree(tree, 1, [4, 5])
    across, _ = split_internal_tree(tree, 1, [3, 5])
    good = float(relabel_delta(tree, along, resp, z_loc, z_var, log_eta, prior, 1.0, base))
    bad = float(relabel_delta(tree, across, resp, z_loc, z_var, log_eta, prior, 1.0, base))
    assert good > 20 and bad < good - 20, (good, bad)


def test_hcrl_module_coarse_edits_keep_the_tree_and_place_the_gaussians():
    import pyro_hc

    model = pyro_hc.get_model("hcrl2", depth=3, latent_dim=2, hidden_dims=(8,), capacity=16, pretrain_epochs=0,
                              likelihood="gaussian", structure="elbo", init_tree="path")
    model.fit(torch.randn(20, 4), epochs=0, progress=False)  # builds the module on one path
    module = model.module_
    for _ in range(3):
        add_child_in_order(module.tree, 1)  # leaves 2..5 under coarse node 1
    target = (torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]))
    expected_id = split_internal_tree(module.tree, 1, [4, 5])[1]
    sibling = module.split_internal(1, [4, 5], {expected_id: target, 1: target})
    assert sibling == expected_id and module.tree.children(sibling) == [4, 5]
    assert torch.allclose(module.node_locs[sibling].detach(), target[0])
    assert torch.allclose(module.node_scales[sibling].detach(), target[1])
    module.reparent(3, sibling, {sibling: target})
    assert module.tree.children(sibling) == [3, 4, 5] and module.tree.children(1) == [2]
    with pytest.raises(ValueError):
        module.reparent(2, sibling, {})  # node 1 would be left without a child
    module.merge_internal(1, sibling, {1: target})
    assert module.tree.children(1) == [2, 3, 4, 5] and sibling not in module.tree
    module.tree.check()
    assert isinstance(module.tree, ClusterTree) and module.path_index().n_full == 4


def test_refined_merge_delta_is_merge_delta_without_refinement_and_finite_with_it():
    from pyro_hc.heuristics.elbo_moves import merge_delta, refined_merge_delta

    tree, resp, z_loc, z_var, log_eta, prior, gamma = two_group_problem(3)
    exact = merge_delta(tree, 0, 1, resp, z_loc, z_var, prior, gamma)  # leaf 3 into leaf 2
    assert float(refined_merge_delta(tree, 0, 1, resp, z_loc, z_var, log_eta, prior, gamma, steps=0)) == pytest.approx(
        float(exact), rel=1e-9, abs=1e-9)
    refined = float(refined_merge_delta(tree, 0, 1, resp, z_loc, z_var, log_eta, prior, gamma, steps=3))
    assert refined == refined and abs(refined - float(exact)) > 1e-6  # the E-steps do move the data


def _naive_refine(tree, rows, resp, z_loc, z_var, log_eta, prior, steps, data_weight):
    """The partial E-steps by their definition: every node's posterior from the whole of ``resp``, one
    node at a time, then the touched paths' cells re-chosen."""
    paths = tree.paths()
    n, _, levels = resp.shape
    for _ in range(steps):
        post = {}
        for node in tree.nodes():
            w = sum(resp[:, k, level] for k, path in enumerate(paths) for level in range(levels) if path[level] == node)
            w = data_weight * w
            post[node] = prior.posterior(w.sum(), w @ z_loc, w @ (z_loc ** 2 + z_var))
        mass = resp[:, rows].sum((1, 2))
        path_mass = resp[:, rows].sum((0, 2))
        logits = torch.stack([torch.stack([
            post[paths[k][level]].expected_log_likelihood(z_loc, z_var).sum(-1) + (path_mass[i] / path_mass.sum()).log()
            + log_eta[:, level] for level in range(levels)], -1) for i, k in enumerate(rows)], 1)
        resp = resp.clone()
        resp[:, rows] = torch.softmax(logits.reshape(n, -1), -1).reshape(logits.shape) * mass[:, None, None]
    return resp


@pytest.mark.parametrize("rows", [[0], [1, 2], [0, 1, 2, 3]])
def test_refined_responsibilities_equal_the_e_steps_by_their_definition(rows):
    from pyro_hc.heuristics.elbo_moves import refine_responsibilities

    tree, resp, z_loc, z_var, log_eta, prior, gamma = two_group_problem(4)
    path_nodes = torch.as_tensor(tree.paths())
    refined = refine_responsibilities(tree, path_nodes, rows, resp, z_loc, z_var, log_eta, prior, 3, data_weight=0.4)
    expected = _naive_refine(tree, rows, resp, z_loc, z_var, log_eta, prior, 3, 0.4)
    torch.testing.assert_close(refined, expected, rtol=1e-10, atol=1e-12)
    assert (refined - resp).abs().max() > 1e-3  # the E-steps moved the data: the check is not vacuous
    untouched = [k for k in range(4) if k not in rows]
    assert torch.equal(refined[:, untouched], resp[:, untouched])


@pytest.mark.parametrize("data_weight", [1.0, 0.3])
def test_refined_birth_delta_is_the_difference_of_brute_force_elbos_of_the_refined_q(data_weight):
    from pyro_hc.heuristics.elbo_moves import refine_responsibilities, refined_birth_delta

    tree, resp, z_loc, z_var, log_eta, prior, gamma = two_group_problem(5)
    split = torch.rand(resp.shape[0], generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    delta, _ = refined_birth_delta(tree, 1, split, resp, z_loc, z_var, log_eta, prior, gamma, 2, data_weight)
    # the same move by hand: leaf 3 (path 1) split, both sides refined, scored by the ELBO's definition
    grown = tree.copy(events=False)
    new_leaf = add_child_in_order(grown, 1)
    columns = {path: resp[:, i] for i, path in enumerate(tree.paths())}
    columns[(0, 1, new_leaf)] = resp[:, 1] * (1 - split[:, None])
    columns[(0, 1, 3)] = resp[:, 1] * split[:, None]
    after = torch.stack([columns[path] for path in grown.paths()], 1)
    pair = [grown.paths().index((0, 1, 3)), grown.paths().index((0, 1, new_leaf))]
    before = refine_responsibilities(tree, torch.as_tensor(tree.paths()), [1], resp, z_loc, z_var, log_eta, prior, 2,
                                     data_weight)
    after = refine_responsibilities(grown, torch.as_tensor(grown.paths()), pair, after, z_loc, z_var, log_eta, prior,
                                    2, data_weight)
    expected = (brute_force_tree_elbo(grown, after, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight)
                - brute_force_tree_elbo(tree, before, z_loc, z_var, log_eta, prior, gamma, data_weight=data_weight))
    assert float(delta) == pytest.approx(float(expected), rel=1e-8, abs=1e-8)
    assert abs(float(delta)) > 1e-3


# child means centred on the parent's (TreeNodePrior) -------------------------------------------


def _tree_statistics(seed=0):
    """Root 0 (nothing emitted) -> coarse 1, 2 (a few points each) -> leaves 3, 4 | 5 (many), float64."""
    generator = torch.Generator().manual_seed(seed)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2])
    centres = torch.tensor([[0.0, 0.0], [-3.0, 0.5], [3.0, 0.0], [-4.0, 0.0], [-2.5, 1.0], [3.5, -0.5]],
                           dtype=torch.float64)
    count = torch.tensor([0.0, 5.0, 3.0, 40.0, 30.0, 25.0], dtype=torch.float64)
    points = [c + 0.4 * torch.randn(int(n), 2, generator=generator, dtype=torch.float64) for c, n in zip(centres, count)]
    sum_z = torch.stack([p.sum(0) for p in points])
    sum_z2 = torch.stack([p.square().sum(0) for p in points])
    base = NormalGamma(torch.tensor([0.2, -0.1], dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64),
                       torch.tensor(1.0, dtype=torch.float64), torch.tensor([0.8, 0.5], dtype=torch.float64))
    return parents, count, sum_z, sum_z2, TreeNodePrior(base, coupling=0.2)


def test_tree_node_posterior_is_a_stationary_point_and_its_elbo_a_monte_carlo_expectation():
    parents, count, sum_z, sum_z2, prior = _tree_statistics()
    elbo, loc, var, concentration, rate = tree_node_posterior(parents, count, sum_z, sum_z2, prior)
    free = [t.clone().requires_grad_() for t in (loc, var.log(), concentration.log(), rate.log())]
    value = _tree_node_elbo(parents, count, sum_z, sum_z2, prior, free[0], free[1].exp(), free[2].exp(), free[3].exp())
    assert float(value.detach()) == pytest.approx(float(elbo), rel=1e-10)
    for gradient in torch.autograd.grad(value, free):  # coordinate ascent converged: every gradient vanishes
        assert float(gradient.abs().max()) < 1e-5
    # the closed form against E_q[log p(stats, μ, λ) − log q(μ, λ)] by sampling q
    generator = torch.Generator().manual_seed(1)
    draws = 400_000
    mu = loc + var.sqrt() * torch.randn(draws, *loc.shape, generator=generator, dtype=torch.float64)
    lam = torch._standard_gamma(concentration.expand(draws, *loc.shape).contiguous(), generator=generator) / rate
    base = prior.base
    root = (parents < 0)[:, None]
    centre = torch.where(root, base.loc.expand_as(loc), mu[:, parents.clamp_min(0)])
    kappa = torch.where(root, base.precision_scale.expand_as(loc), torch.full_like(loc, prior.coupling))
    log_joint = (0.5 * count[:, None] * (lam.log() - math.log(2 * math.pi))
                 - 0.5 * lam * (sum_z2 - 2 * sum_z * mu + count[:, None] * mu.square())
                 + Normal(centre, (kappa * lam).rsqrt()).log_prob(mu)
                 + Gamma(base.concentration, base.rate).log_prob(lam))
    log_q = Normal(loc, var.sqrt()).log_prob(mu) + Gamma(concentration, rate).log_prob(lam)
    samples = (log_joint - log_q).sum((1, 2))
    error = float(samples.std()) / draws ** 0.5
    assert float(samples.mean()) == pytest.approx(float(elbo), abs=5 * error + 1e-6)


def test_learnt_coupling_is_a_stationary_point_and_its_elbo_a_monte_carlo_expectation():
    """``coupling_shape``: ``κ_l ~ Gamma(a, a / coupling)`` per level of the parents, ``q(κ_l)`` found
    with the rest."""
    from dataclasses import replace

    parents, count, sum_z, sum_z2, prior = _tree_statistics()
    prior = replace(prior, coupling_shape=2.0)
    elbo, loc, var, concentration, rate, k_conc, k_rate = tree_node_posterior(parents, count, sum_z, sum_z2, prior,
                                                                              return_coupling=True)
    used = torch.tensor([True, True, False, False, False, False])  # levels 0 and 1 have children
    # the shape is fixed by the number of children x coordinates: a + d |children| / 2
    torch.testing.assert_close(k_conc[used], torch.tensor([2.0 + 2, 2.0 + 3], dtype=torch.float64))
    free = [t.clone().requires_grad_() for t in (loc, var.log(), concentration.log(), rate.log(), k_conc.log(),
                                                 k_rate.log())]
    value = _tree_node_elbo(parents, count, sum_z, sum_z2, prior, free[0], *(f.exp() for f in free[1:]))
    assert float(value.detach()) == pytest.approx(float(elbo), rel=1e-10)
    gradients = torch.autograd.grad(value, free)
    for gradient in gradients[:4]:
        assert float(gradient.abs().max()) < 1e-5
    for gradient in gradients[4:]:  # q(κ) of the two levels with children; the others are not read
        assert float(gradient[used].abs().max()) < 1e-5 and float(gradient[~used].abs().max()) == 0
    # the coupling is learnt per level: the root's children lie 3 from it, the coarse nodes'
    # children about 1 from theirs, so level 0's κ is the looser (prior mean 0.2 for both)
    e_kappa = k_conc / k_rate
    assert float(e_kappa[0]) < 0.8 * float(e_kappa[1])
    # the closed form against E_q[log p(stats, μ, λ, κ) − log q(μ, λ, κ)] by sampling q
    generator = torch.Generator().manual_seed(2)
    draws = 400_000
    mu = loc + var.sqrt() * torch.randn(draws, *loc.shape, generator=generator, dtype=torch.float64)
    lam = torch._standard_gamma(concentration.expand(draws, *loc.shape).contiguous(), generator=generator) / rate
    kappa = torch._standard_gamma(k_conc.expand(draws, -1).contiguous(), generator=generator) / k_rate
    parent_level = torch.tensor([0, 0, 0, 1, 1, 1])  # κ of each node's parent's level (the root's: κ₀)
    base = prior.base
    root = (parents < 0)[:, None]
    up = parents.clamp_min(0)
    centre = torch.where(root, base.loc.expand_as(loc), mu[:, up])
    precision = torch.where(root, base.precision_scale.expand_as(loc), kappa[:, parent_level, None].expand(-1, -1, 2))
    log_joint = ((0.5 * count[:, None] * (lam.log() - math.log(2 * math.pi))
                  - 0.5 * lam * (sum_z2 - 2 * sum_z * mu + count[:, None] * mu.square())
                  + Normal(centre, (precision * lam).rsqrt()).log_prob(mu)
                  + Gamma(base.concentration, base.rate).log_prob(lam)).sum((1, 2))
                 + Gamma(2.0, 2.0 / prior.coupling).log_prob(kappa[:, used]).sum(-1))
    log_q = ((Normal(loc, var.sqrt()).log_prob(mu) + Gamma(concentration, rate).log_prob(lam)).sum((1, 2))
             + Gamma(k_conc[used], k_rate[used]).log_prob(kappa[:, used]).sum(-1))
    samples = log_joint - log_q
    error = float(samples.std()) / draws ** 0.5
    assert float(samples.mean()) == pytest.approx(float(elbo), abs=5 * error + 1e-6)


def test_one_node_tree_prior_is_a_lower_bound_near_the_normal_gamma_evidence():
    """A root alone is the conjugate Normal–Gamma; the mean-field bound lies just below its evidence."""
    parents, count, sum_z, sum_z2, prior = _tree_statistics()
    exact = float(prior.base.log_evidence(count[3:4, None], sum_z[3:4], sum_z2[3:4]).sum())
    bound = float(tree_node_posterior(torch.tensor([-1]), count[3:4], sum_z[3:4], sum_z2[3:4], prior)[0])
    assert exact - 1.0 < bound <= exact + 1e-9


def test_leaf_only_grouping_is_scored_only_when_child_means_are_centred_on_the_parent():
    """Two groups of two leaves under one coarse node, only the leaves emitting: with independent node
    priors a split of the coarse node along the groups and one across them score alike (the internal
    nodes emit nothing); with TreeNodePrior the split along the groups raises the ELBO, across does not."""
    generator = torch.Generator().manual_seed(0)
    tree, centres, per = two_groups_of_two_leaves()
    z_loc = torch.cat([c + 0.2 * torch.randn(per, 2, generator=generator) for c in centres]).double()
    resp = torch.zeros(4 * per, 4, 3, dtype=torch.float64)
    resp[torch.arange(4 * per), torch.arange(4 * per) // per, 2] = 1.0
    z_var = torch.zeros_like(z_loc)
    log_eta = torch.tensor([0.01, 0.01, 0.98], dtype=torch.float64).log().expand(4 * per, 3)
    independent = node_prior(z_loc, z_var)
    along, _ = split_internal_tree(tree, 1, [4, 5])
    across, _ = split_internal_tree(tree, 1, [3, 5])
    scores = {}
    for name, prior in (("independent", independent), ("centred", TreeNodePrior(independent, coupling=0.1)),
                        ("learnt", TreeNodePrior(independent, coupling=0.1, coupling_shape=1.0))):
        scores[name] = [float(relabel_delta(tree, new_tree, resp, z_loc, z_var, log_eta, prior, 3.0))
                        for new_tree in (along, across)]
    good, bad = scores["independent"]
    assert good == pytest.approx(bad, abs=1e-6)  # blind to the grouping
    good, bad = scores["centred"]
    assert good > 5 and bad < good - 20, scores
    # a coupling learnt per level sees the grouping too, but fits the ungrouped tree's spread as well,
    # so on these 4 leaves in 2-d the split along the groups no longer pays for itself (−1.3 nats)
    good, bad = scores["learnt"]
    assert good > bad + 5, scores
    with pytest.raises(ValueError, match="local only"):  # the local deltas assume independent nodes
        birth_delta(tree, 0, torch.full((4 * per,), 0.5, dtype=torch.float64), resp, z_loc, z_var,
                    TreeNodePrior(independent), 3.0)


def test_a_leaf_without_mass_is_offered_to_its_heaviest_sibling_and_deleted():
    """Leaves 2 and 6 hold data 6 sd apart, leaf 5 between them in creation order
    holds nothing. The nearest pair by KL (2, 6) would lower the ELBO if merged; the empty leaf is
    far from both by KL, so only the light-leaf rule proposes it, and deleting it raises the ELBO
    (its stick no longer takes prior mass from the later sibling)."""
    from pyro_hc.heuristics.elbo_moves import ELBOStructureMoves
    from .test_hcrl import tiny_hcrl

    module = tiny_hcrl(True)
    empty = module.add_leaf(1, (torch.zeros(2), torch.ones(2)))
    heavy = module.add_leaf(1, (torch.tensor([3.0, 1.2]), torch.full((2,), 0.2)))
    paths = module.tree.paths()
    row = {path[-1]: k for k, path in enumerate(paths)}
    generator = torch.Generator().manual_seed(0)
    centres = {2: torch.tensor([3.0, 0.0]), heavy: torch.tensor([3.0, 1.2]), 4: torch.tensor([-3.0, 0.0])}
    z_loc = torch.cat([c + 0.2 * torch.randn(30, 2, generator=generator) for c in centres.values()])
    resp = torch.zeros(90, len(paths), 3)
    for i, leaf in enumerate(centres):
        resp[30 * i:30 * (i + 1), row[leaf], 2] = 1.0
    z_var, log_eta = torch.zeros_like(z_loc), torch.full((90, 3), 1 / 3).log()
    prior = node_prior(z_loc, z_var)

    def merge_events(min_mass):
        tree = module.tree.copy()
        saved = module.tree
        module.tree = tree
        try:
            ELBOStructureMoves(min_mass=min_mass, merge_pairs=1)._merge(
                module, tree, paths, resp, z_loc, z_var, log_eta, prior, 1.5, 0, 0)
        finally:
            module.tree = saved
        return tree, [e for e in tree.events if e["kind"] == "merge"]

    tree, events = merge_events(min_mass=0.0)  # no light-leaf rule: only the nearest pair, rejected
    assert [(e["keep"], e["drop"], e["accepted"]) for e in events] == [(2, heavy, False)] and empty in tree
    tree, events = merge_events(min_mass=10.0)
    deleted = [e for e in events if e["drop"] == empty]
    assert len(deleted) == 1 and deleted[0]["accepted"] and deleted[0]["delta_elbo"] > 0
    assert empty not in tree and heavy in tree


def test_hcrl_passes_a_learnt_coupling_to_the_moves_and_their_prior():
    import pyro_hc

    model = pyro_hc.get_model("hcrl2", elbo_mean_coupling=2.0, elbo_mean_coupling_shape=1.5)
    moves = model.heuristics(0)
    assert (moves.mean_coupling, moves.mean_coupling_shape) == (2.0, 1.5)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    prior = moves.node_prior(z, torch.zeros_like(z))
    assert isinstance(prior, TreeNodePrior) and (prior.coupling, prior.coupling_shape) == (2.0, 1.5)
    assert pyro_hc.get_model("hcrl2").heuristics(0).mean_coupling_shape is None  # a fixed κ by default
    digits = pyro_hc.load_dataset("digits", n_samples=40)
    for settings in ({"elbo_mean_coupling_shape": 0.0}, {"elbo_mean_coupling_shape": True},
                     {"elbo_mean_coupling_shape": 1.0, "elbo_mean_coupling": None}):
        with pytest.raises(ValueError, match="elbo_mean_coupling_shape"):
            pyro_hc.get_model("hcrl2", pretrain_epochs=1, epochs=1, **settings).fit(digits, progress=False)

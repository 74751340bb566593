"""Tests of pyro_hc.distributions: nested stick-breaking paths and the Dirichlet Laplace approximation."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import TraceEnum_ELBO

from pyro_hc.distributions import (
    NestedStickBreaking,
    PathIndex,
    dirichlet_laplace_approximation,
    path_index,
)
from pyro_hc.tree import ClusterTree


# ---------------------------------------------------------------------------- helpers
def two_level_tree() -> ClusterTree:
    """Root 0 with children 1, 2; node 1 with children 3, 4."""
    tree = ClusterTree()
    assert tree.add_child(0) == 1
    assert tree.add_child(0) == 2
    assert tree.add_child(1) == 3
    assert tree.add_child(1) == 4
    return tree


def random_tree(generator: torch.Generator, n_nodes: int, removals: int = 0) -> ClusterTree:
    """A random tree grown by attaching each new node below a uniformly chosen node.

    Leaves end up at various depths; ``removals`` random leaves are removed afterwards so
    that some ids below the maximum are free (inactive columns).
    """
    tree = ClusterTree()
    for _ in range(n_nodes - 1):
        nodes = tree.nodes()
        parent = nodes[int(torch.randint(len(nodes), (), generator=generator))]
        tree.add_child(parent)
    for _ in range(removals):
        leaves = [leaf for leaf in tree.leaves() if leaf != tree.root]
        if not leaves:
            break
        tree.remove_leaf(leaves[int(torch.randint(len(leaves), (), generator=generator))])
    return tree


def hand_path_probs(tree: ClusterTree, v: list[float]) -> list[float]:
    """Path probabilities by the definition, one Python product at a time."""

    def pi(node: int) -> float:
        siblings = tree.children(tree.parent(node))
        weight = v[node]
        for sibling in siblings[: siblings.index(node)]:
            weight *= 1.0 - v[sibling]
        return weight

    probs = []
    for path in tree.paths():
        probs.append(math.prod(pi(node) for node in path[1:]))
    for path in tree.inner_paths():
        remainder = math.prod(1.0 - v[child] for child in tree.children(path[-1]))
        probs.append(math.prod(pi(node) for node in path[1:]) * remainder)
    return probs


# ---------------------------------------------------------------------------- path index
def test_path_index_two_level_tree_layout():
    tree = two_level_tree()
    index = path_index(tree, capacity=6)
    assert isinstance(index, PathIndex)
    assert (index.n_full, index.n_inner, index.n_paths, index.capacity) == (3, 2, 5, 6)
    assert index.tree_version == tree.version
    # rows: full paths (0,1,3), (0,1,4), (0,2); inner paths (0,), (0,1)
    assert index.path_nodes.tolist() == [[0, 1, 3], [0, 1, 4], [0, 2, 2], [0, 0, 0], [0, 1, 1]]
    assert index.path_mask.tolist() == [
        [True, True, True],
        [True, True, True],
        [True, True, False],
        [True, False, False],
        [True, True, False],
    ]
    assert index.is_inner.tolist() == [False, False, False, True, True]
    assert index.last_node.tolist() == [3, 4, 2, 0, 1]
    assert index.used.tolist() == [False, True, True, True, True, False]
    # columns: node ids 0..5
    assert index.stick_coef.tolist() == [
        [0, 1, 0, 1, 0, 0],  # v1 v3
        [0, 1, 0, 0, 1, 0],  # v1 v4 (1 - v3)
        [0, 0, 1, 0, 0, 0],  # v2 (1 - v1)
        [0, 0, 0, 0, 0, 0],  # (1 - v1)(1 - v2)
        [0, 1, 0, 0, 0, 0],  # v1 (1 - v3)(1 - v4)
    ]
    assert index.remainder_coef.tolist() == [
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
    ]
    assert index.stick_coef.dtype == torch.get_default_dtype()


def test_path_order_matches_tree():
    tree = random_tree(torch.Generator().manual_seed(3), 15, removals=3)
    index = path_index(tree, capacity=20)
    rows = [
        tuple(node for node, real in zip(nodes, mask) if real)
        for nodes, mask in zip(index.path_nodes.tolist(), index.path_mask.tolist())
    ]
    assert rows == tree.paths() + tree.inner_paths()
    assert index.last_node.tolist() == [path[-1] for path in rows]
    assert index.path_nodes.shape == (index.n_paths, tree.depth() + 1)
    tensors = tree.to_tensors()
    assert torch.equal(index.path_nodes, torch.cat([tensors.paths, tensors.inner_paths]))


def test_path_index_lone_root():
    index = path_index(ClusterTree(), capacity=3)
    assert (index.n_full, index.n_inner) == (1, 0)
    d = NestedStickBreaking(torch.rand(3), index)
    assert torch.allclose(d.probs, torch.ones(1))


def test_path_index_errors():
    tree = two_level_tree()
    with pytest.raises(ValueError, match="capacity"):
        path_index(tree, capacity=4)  # node 4 does not fit
    with pytest.raises(ValueError, match="capacity"):
        path_index(tree, capacity=0)
    index = path_index(tree, capacity=5)
    with pytest.raises(ValueError, match="shape"):
        index.log_path_probs(torch.rand(6))
    with pytest.raises(ValueError, match="shape"):
        NestedStickBreaking(torch.rand(2, 4), index)
    with pytest.raises(TypeError):
        NestedStickBreaking(torch.rand(5), "not an index")
    with pytest.raises(TypeError):
        NestedStickBreaking(torch.ones(5, dtype=torch.long), index)


def test_path_index_to_device_copies():
    index = path_index(two_level_tree(), capacity=5)
    moved = index.to("cpu")
    assert moved is not index
    assert torch.equal(moved.stick_coef, index.stick_coef)
    assert moved.device == torch.device("cpu")


# ---------------------------------------------------------------------------- probabilities
def test_hand_computation_two_level_tree():
    tree = two_level_tree()
    v1, v2, v3, v4 = 0.3, 0.6, 0.2, 0.7
    sticks = torch.tensor([0.9, v1, v2, v3, v4, 0.4], dtype=torch.float64)  # root and id 5 unused
    d = NestedStickBreaking(sticks, path_index(tree, capacity=6))
    expected = torch.tensor(
        [
            v1 * v3,  # (0, 1, 3)
            v1 * v4 * (1 - v3),  # (0, 1, 4)
            v2 * (1 - v1),  # (0, 2)
            (1 - v1) * (1 - v2),  # inner (0,): room for a third child of the root
            v1 * (1 - v3) * (1 - v4),  # inner (0, 1): room for a third child of node 1
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(d.probs, expected, atol=1e-12)
    assert torch.allclose(d.logits, expected.log(), atol=1e-12)
    assert float(expected.sum()) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_nodes=st.integers(1, 14),
    removals=st.integers(0, 3),
    extra=st.integers(0, 4),
)
def test_probabilities_sum_to_one_on_random_trees(seed, n_nodes, removals, extra):
    generator = torch.Generator().manual_seed(seed)
    tree = random_tree(generator, n_nodes, removals)
    capacity = max(tree.nodes()) + 1 + extra
    index = path_index(tree, capacity)
    assert index.n_full == len(tree.leaves()) and index.n_inner == len(tree.internal_nodes())
    sticks = torch.rand(capacity, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    # Unused entries are ignored, whatever they hold.
    unused = ~index.used
    sticks = torch.where(unused, torch.full_like(sticks, float("nan")), sticks)
    probs = NestedStickBreaking(sticks, index, validate_args=False).probs
    assert probs.shape == (index.n_paths,)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(probs, torch.tensor(hand_path_probs(tree, sticks.tolist()), dtype=torch.float64))


def test_leaf_above_max_depth():
    tree = ClusterTree()
    a = tree.add_child(0)
    b = tree.add_child(0)  # leaf at level 1
    c = tree.add_child(a)
    tree.add_child(c)  # leaf at level 3
    assert tree.is_leaf(b) and tree.depth() == 3
    sticks = torch.tensor([0.5, 0.3, 0.8, 0.4, 0.6], dtype=torch.float64)
    d = NestedStickBreaking(sticks, path_index(tree, capacity=5))
    assert float(d.probs.sum()) == pytest.approx(1.0)
    assert torch.allclose(d.probs, torch.tensor(hand_path_probs(tree, sticks.tolist()), dtype=torch.float64))


def test_boundary_sticks_are_finite():
    tree = two_level_tree()
    sticks = torch.tensor([0.5, 0.0, 1.0, 1.0, 0.0], requires_grad=True)
    d = NestedStickBreaking(sticks, path_index(tree, capacity=5))
    probs = d.probs.detach()
    assert torch.isfinite(d.logits).all()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    # v1 = 0 sends everything below the root's first child to the second, v2 = 1 takes it all.
    assert float(probs[2]) == pytest.approx(1.0, abs=1e-5)
    d.logits.sum().backward()
    assert torch.isfinite(sticks.grad).all()


# ---------------------------------------------------------------------------- distribution API
def test_support_sample_log_prob_enumerate():
    index = path_index(two_level_tree(), capacity=5)
    d = NestedStickBreaking(torch.rand(5), index, validate_args=True)
    assert d.has_enumerate_support
    assert d.support.lower_bound == 0 and d.support.upper_bound == 4
    assert d.arg_constraints == {"sticks": dist.constraints.unit_interval}
    x = d.sample((1000,))
    assert x.shape == (1000,) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) <= 4
    assert torch.allclose(d.log_prob(torch.arange(5)), d.logits)
    assert d.enumerate_support().tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(5))
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(-1))
    with pytest.raises(ValueError):
        NestedStickBreaking(torch.full((5,), 1.5), index, validate_args=True)


def test_sampling_frequencies_match_probabilities():
    torch.manual_seed(0)
    index = path_index(two_level_tree(), capacity=5)
    d = NestedStickBreaking(torch.tensor([0.5, 0.3, 0.6, 0.2, 0.7]), index)
    counts = torch.bincount(d.sample((20000,)), minlength=5).float() / 20000
    assert torch.allclose(counts, d.probs, atol=0.015)


def test_batch_and_expand_shapes():
    index = path_index(two_level_tree(), capacity=6)
    sticks = torch.rand(4, 3, 6)
    d = NestedStickBreaking(sticks, index)
    assert d.batch_shape == (4, 3) and d.event_shape == ()
    assert d.probs.shape == (4, 3, 5)
    assert torch.allclose(d.probs.sum(-1), torch.ones(4, 3))
    assert torch.allclose(d.probs[2, 1], NestedStickBreaking(sticks[2, 1], index).probs)
    assert d.sample((7,)).shape == (7, 4, 3)
    assert d.log_prob(torch.zeros(4, 3, dtype=torch.long)).shape == (4, 3)
    assert d.enumerate_support().shape == (5, 4, 3)
    assert d.enumerate_support(expand=False).shape == (5, 1, 1)

    single = NestedStickBreaking(torch.rand(6), index)
    expanded = single.expand((2, 3))
    assert isinstance(expanded, NestedStickBreaking)
    assert expanded.batch_shape == (2, 3)
    assert expanded.sticks.shape == (2, 3, 6)
    assert expanded.index is index
    assert torch.allclose(expanded.probs, single.probs.expand(2, 3, 5))
    assert expanded.sample().shape == (2, 3)
    assert d.expand((2, 4, 3)).batch_shape == (2, 4, 3)
    assert single.expand_by((8,)).batch_shape == (8,)


def test_gradient_flows_to_sticks():
    tree = random_tree(torch.Generator().manual_seed(1), 10)
    capacity = max(tree.nodes()) + 3
    index = path_index(tree, capacity)
    sticks = torch.rand(2, capacity).clamp(0.05, 0.95).requires_grad_()
    d = NestedStickBreaking(sticks, index)
    d.log_prob(torch.tensor([0, index.n_paths - 1])).sum().backward()
    grad = sticks.grad
    assert torch.isfinite(grad).all()
    assert grad[:, ~index.used].abs().max() == 0  # ignored entries get no gradient
    assert grad[:, index.used].abs().sum() > 0


def test_float64_sticks_with_float32_index():
    index = path_index(two_level_tree(), capacity=5, dtype=torch.float32)
    d = NestedStickBreaking(torch.rand(5, dtype=torch.float64), index)
    assert d.logits.dtype == torch.float64


def test_parallel_enumeration_in_trace_enum_elbo():
    pyro.clear_param_store()
    torch.manual_seed(0)
    tree = two_level_tree()
    capacity, dim, n = 6, 2, 7
    index = path_index(tree, capacity)
    sticks = torch.rand(capacity).clamp(0.1, 0.9).requires_grad_()
    loc = torch.randn(capacity, dim, requires_grad=True)
    z = torch.randn(n, dim)

    def model(z):
        with pyro.plate("data", z.shape[0]):
            path = pyro.sample(
                "path", NestedStickBreaking(sticks, index), infer={"enumerate": "parallel"}
            )
            node = index.last_node[path]
            pyro.sample("z", dist.Normal(loc[node], 1.0).to_event(1), obs=z)

    def guide(z):
        pass

    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, z)

    log_prior = index.log_path_probs(sticks)  # [K]
    log_lik = dist.Normal(loc[index.last_node], 1.0).to_event(1).log_prob(z.unsqueeze(-2))  # [n, K]
    expected = -(log_prior + log_lik).logsumexp(-1).sum()
    assert torch.allclose(loss, expected, atol=1e-5)

    grads = torch.autograd.grad(loss, [sticks, loc])
    expected_grads = torch.autograd.grad(expected, [sticks, loc])
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, atol=1e-5)
    assert grads[0].abs().sum() > 0


# ---------------------------------------------------------------------------- Laplace approximation
def test_laplace_symmetric_known_values():
    loc, scale = dirichlet_laplace_approximation(torch.ones(3))
    assert torch.allclose(loc, torch.zeros(3))
    assert torch.allclose(scale**2, torch.full((3,), 2.0 / 3.0))


def test_laplace_asymmetric_known_values():
    # alpha = (1, 2, 4), L = 3:
    #   log alpha = (0, ln 2, 2 ln 2), mean ln 2        -> mu = (-ln 2, 0, ln 2)
    #   sum 1/alpha = 1 + 1/2 + 1/4 = 7/4, / L^2 = 7/36
    #   (1/alpha)(1 - 2/3) = (1/3, 1/6, 1/12) = (12/36, 6/36, 3/36)
    #   -> sigma^2 = (19/36, 13/36, 10/36)
    loc, scale = dirichlet_laplace_approximation(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    ln2 = math.log(2.0)
    assert torch.allclose(loc, torch.tensor([-ln2, 0.0, ln2], dtype=torch.float64))
    assert torch.allclose(scale**2, torch.tensor([19.0, 13.0, 10.0], dtype=torch.float64) / 36)


def test_laplace_two_categories():
    # L = 2: the (1 - 2/L) term vanishes, sigma^2 = (1/4)(1/a + 1/b) for both.
    loc, scale = dirichlet_laplace_approximation(torch.tensor([2.0, 8.0]))
    assert torch.allclose(loc, torch.tensor([-math.log(2.0), math.log(2.0)]))
    assert torch.allclose(scale**2, torch.full((2,), 0.25 * (0.5 + 0.125)))


@pytest.mark.parametrize("alpha", [[10.0, 10.0, 10.0], [5.0, 10.0, 20.0], [3.0, 6.0, 9.0, 12.0]])
def test_laplace_monte_carlo_mean(alpha):
    generator = torch.Generator().manual_seed(0)
    alpha = torch.tensor(alpha)
    loc, scale = dirichlet_laplace_approximation(alpha)
    noise = torch.randn((50000, alpha.numel()), generator=generator)
    mean = torch.softmax(loc + scale * noise, dim=-1).mean(0)
    assert torch.allclose(mean, alpha / alpha.sum(), atol=0.03)


def test_laplace_batch_shapes_and_gradient():
    alpha = (torch.rand(4, 2, 5) * 3 + 0.5).requires_grad_()
    loc, scale = dirichlet_laplace_approximation(alpha)
    assert loc.shape == scale.shape == (4, 2, 5)
    assert torch.allclose(loc.sum(-1), torch.zeros(4, 2), atol=1e-5)
    row_loc, row_scale = dirichlet_laplace_approximation(alpha[3, 1].detach())
    assert torch.allclose(loc[3, 1], row_loc) and torch.allclose(scale[3, 1], row_scale)
    (loc.sum() + scale.sum()).backward()
    assert torch.isfinite(alpha.grad).all()
    # plain lists and integer tensors are accepted
    loc_int, _ = dirichlet_laplace_approximation(torch.tensor([1, 1, 1]))
    assert loc_int.dtype == torch.get_default_dtype()
    assert dirichlet_laplace_approximation([1.0, 2.0])[0].shape == (2,)


@pytest.mark.parametrize(
    "alpha",
    [
        torch.tensor([1.0, 0.0, 2.0]),
        torch.tensor([1.0, -1.0]),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([2.0]),
        torch.tensor(2.0),
        torch.ones(3, 1),
    ],
)
def test_laplace_errors(alpha):
    with pytest.raises(ValueError):
        dirichlet_laplace_approximation(alpha)


# ---------------------------------------------------------------------------- creation order
def test_sticks_follow_creation_order_when_an_id_is_reused():
    """A child grown after a prune reuses a freed id but comes after its older siblings.

    Chain 0 -> 1 -> 2, a branch 0 -> 3 -> 4, the first path pruned (ids 1, 2 freed), then a new
    branch grown under the root: it gets ids 1, 2 again. Its stick weight is v_1 (1 - v_3), the
    older branch keeps v_3 (by id, the new one would come first and take v_1 of node 3's mass).
    """
    from pyro_hc.models._ncrp import chain_tree, add_child_in_order

    tree = chain_tree(3)
    add_child_in_order(tree, add_child_in_order(tree, 0))  # 3, 4
    tree.remove_leaf(2, prune_empty_parents=True)
    new = add_child_in_order(tree, 0)
    add_child_in_order(tree, new)
    assert new == 1 and tree.children(0) == [1, 3]
    v = torch.tensor([0.5, 0.2, 0.5, 0.7, 0.6, 0.5])
    probs = path_index(tree, capacity=6).log_path_probs(v).exp()
    full = dict(zip(tree.paths(), probs[: len(tree.paths())].tolist()))
    assert full[(0, 3, 4)] == pytest.approx(0.7 * 0.6)  # the older branch first: π_3 = v_3
    assert full[(0, 1, 2)] == pytest.approx(0.2 * (1 - 0.7) * 0.5)  # π_1 = v_1 (1 - v_3)
    # without creation ranks (a tree built by hand) siblings fall back to ascending ids
    for node in tree.nodes():
        del tree.graph.nodes[node]["birth"]
    probs = path_index(tree, capacity=6).log_path_probs(v).exp()
    assert probs[tree.paths().index((0, 1, 2))] == pytest.approx(0.2 * 0.5)


# ---------------------------------------------------------------------------- Normal–Gamma
def test_normal_gamma_density_shapes_kl_and_evidence():
    from torch.distributions import kl_divergence

    from pyro_hc.distributions import NormalGamma

    torch.manual_seed(0)
    p = NormalGamma(torch.tensor([0.3, -1.0]), torch.tensor(2.0), torch.tensor([1.5, 3.0]), torch.tensor([0.5, 2.0]))
    assert p.batch_shape == (2,) and p.event_shape == (2,)
    value = torch.tensor([[0.1, 0.7], [-0.5, 2.0]])
    hand = (dist.Gamma(p.concentration, p.rate).log_prob(value[:, 1])
            + dist.Normal(p.loc, (p.precision_scale * value[:, 1]).rsqrt()).log_prob(value[:, 0]))
    assert torch.allclose(p.log_prob(value), hand)
    draws = p.expand((5, 2)).sample((4000,))
    assert draws.shape == (4000, 5, 2, 2) and bool((draws[..., 1] > 0).all())
    q = NormalGamma(torch.tensor([0.0, -0.5]), torch.tensor(5.0), torch.tensor([2.5, 4.0]), torch.tensor([1.0, 1.5]))
    samples = q.sample((200000,))
    monte_carlo = (q.log_prob(samples) - p.log_prob(samples)).mean(0)
    assert torch.allclose(kl_divergence(q, p), monte_carlo, atol=0.02)
    # the evidence of weighted points is the log marginal likelihood: for one point of weight 1,
    # log ∫ N(z | μ, 1/λ) p(μ, λ) dμ dλ, a Student-t — checked by Monte Carlo over the prior
    z = torch.tensor([0.4, -0.2])
    evidence = p.log_evidence(torch.tensor(1.0), z, z.square())
    prior_draws = p.sample((400000,))
    likelihood = dist.Normal(prior_draws[..., 0], prior_draws[..., 1].rsqrt()).log_prob(z)
    assert torch.allclose(evidence, likelihood.logsumexp(0) - math.log(400000), atol=0.02)

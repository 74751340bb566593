"""HCRL1 / HCRL2 / VAE-nCRP: ELBOs against hand sums over paths and levels, the estimator API."""

from __future__ import annotations

import math

import numpy as np

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import pyro_hc
from pyro_hc.infer import local_params
from pyro_hc.models import HCRLModule, VAENCRPModule, load

TINY = dict(latent_dim=2, hidden_dims=(16,), pretrain_epochs=1, capacity=16)


def normal_logpdf(value, loc, scale):
    return (-0.5 * math.log(2 * math.pi) - torch.log(scale) - (value - loc) ** 2 / (2 * scale**2)).sum(-1)


def beta_logpdf(v, a, b):
    return ((a - 1) * torch.log(v) + (b - 1) * torch.log1p(-v)
            + torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)).sum(-1)


def two_path_tree_probabilities(v):
    """Root 0 -> 1 -> 2 and 0 -> 3 -> 4 (children ordered by id); v indexed by node id.

    Full paths (0,1,2), (0,3,4); inner paths (0), (0,1), (0,3), in that order.
    """
    v1, v2, v3, v4 = v[1], v[2], v[3], v[4]
    return torch.stack([
        v1 * v2,                        # (0,1,2)
        v3 * (1 - v1) * v4,             # (0,3,4)
        (1 - v1) * (1 - v3),            # inner (0): a new child of the root
        v1 * (1 - v2),                  # inner (0,1)
        v3 * (1 - v1) * (1 - v4),       # inner (0,3)
    ])


# node of each path at levels 0, 1, 2 (inner paths repeat their last node)
PATH_NODES = torch.tensor([[0, 1, 2], [0, 3, 4], [0, 0, 0], [0, 1, 1], [0, 3, 3]])


def tiny_hcrl(per_datum_levels):
    torch.manual_seed(5)
    with local_params():
        module = HCRLModule(n_features=5, latent_dim=2, hidden_dims=(4,), likelihood="bernoulli", depth=3,
                            capacity=8, stick_concentration=1.5, level_concentration=0.8,
                            per_datum_levels=per_datum_levels)
        assert module.grow(0) == [3, 4]
        with torch.no_grad():
            module.node_locs_unconstrained.normal_()
            module.node_scales_unconstrained.uniform_(-0.5, 0.5)
            module.stick_a_unconstrained.uniform_(-0.5, 0.5)
            module.stick_b_unconstrained.uniform_(-0.5, 0.5)
            if not per_datum_levels:
                module.level_loc_unconstrained.copy_(torch.tensor([0.2, -0.3, 0.4]))
    return module


def guide_values_and_loss(module, x, seed=3):
    with local_params():
        pyro.set_rng_seed(seed)
        trace = poutine.trace(module.guide).get_trace(x)
        pyro.set_rng_seed(seed)
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(module.model, module.guide, x)
    return {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}, loss


@pytest.mark.parametrize("per_datum_levels", [True, False])
def test_hcrl_elbo_equals_hand_sum_over_paths_and_levels(per_datum_levels):
    module = tiny_hcrl(per_datum_levels)
    x = torch.rand(6, 5)
    values, loss = guide_values_and_loss(module, x)
    with local_params(), torch.no_grad():
        v = torch.full((8,), 0.5)
        v[torch.tensor([1, 2, 3, 4])] = values["sticks"]
        h, z = values["level_logits"], values["z"]
        prior_loc, prior_scale = module.level_prior_loc, module.level_prior_scale
        # the objective's mixture is over the full paths, their prior renormalised
        log_path = torch.log_softmax(torch.log(two_path_tree_probabilities(v))[:2], -1)  # 2 full paths
        log_eta = torch.log_softmax(h, -1)  # B x L (or L)
        locs, scales = module.node_locs[PATH_NODES[:2]], module.node_scales[PATH_NODES[:2]]  # K x L x d
        log_component = normal_logpdf(z[:, None, None, :], locs, scales)  # B x K x L
        log_pz = torch.logsumexp(log_path[:, None] + log_eta[..., None, :] + log_component, dim=(-2, -1))
        probs = torch.sigmoid(module.decoder(z))
        log_px = (x * torch.log(probs) + (1 - x) * torch.log1p(-probs)).sum(-1)
        z_loc, z_scale = module.encoder(x)
        elbo = (log_px + log_pz - normal_logpdf(z, z_loc, z_scale)).sum()
        nodes = torch.tensor([1, 2, 3, 4])
        elbo += beta_logpdf(values["sticks"], torch.ones(4), torch.full((4,), 1.5))
        elbo -= beta_logpdf(values["sticks"], module.stick_a[nodes], module.stick_b[nodes])
        if per_datum_levels:
            h_loc, h_scale = module.level_encoder(x)
            elbo += (normal_logpdf(h, prior_loc, prior_scale) - normal_logpdf(h, h_loc, h_scale)).sum()
        else:
            elbo += normal_logpdf(h, prior_loc, prior_scale) - normal_logpdf(h, module.level_loc, module.level_scale)
    assert torch.allclose(loss, -elbo, rtol=1e-5, atol=1e-4), (loss, -elbo)


def test_vae_ncrp_elbo_equals_hand_sum_over_paths():
    torch.manual_seed(2)
    with local_params():
        module = VAENCRPModule(n_features=5, latent_dim=2, hidden_dims=(4,), likelihood="bernoulli", depth=3,
                               capacity=8, stick_concentration=1.0, leaf_scale=0.5, drift_scale=0.7)
        module.grow(0)
        with torch.no_grad():
            module.node_mean_locs_unconstrained.normal_()
    x = torch.rand(4, 5)
    values, loss = guide_values_and_loss(module, x)
    with local_params(), torch.no_grad():
        v = torch.full((8,), 0.5)
        v[torch.tensor([1, 2, 3, 4])] = values["sticks"]
        means = values["node_means"]  # nodes 0..4 in ascending id order
        z = values["z"]
        log_path = torch.log(two_path_tree_probabilities(v))
        last = PATH_NODES[:, -1]
        # full paths emit with σ_D; an inner path ending at level k marginalises (2 - k) drifts
        missing = torch.tensor([0.0, 0.0, 2.0, 1.0, 1.0])
        scale = torch.sqrt(0.5**2 + missing * 0.7**2)
        log_pz = torch.logsumexp(log_path + normal_logpdf(z[:, None, :], means[last], scale[:, None]), -1)
        probs = torch.sigmoid(module.decoder(z))
        log_px = (x * torch.log(probs) + (1 - x) * torch.log1p(-probs)).sum(-1)
        z_loc, z_scale = module.encoder(x)
        elbo = (log_px + log_pz - normal_logpdf(z, z_loc, z_scale)).sum()
        drift = normal_logpdf(means[0], torch.zeros(2), torch.tensor(1.0))
        for child, parent in [(1, 0), (2, 1), (3, 0), (4, 3)]:
            drift = drift + normal_logpdf(means[child], means[parent], torch.tensor(0.7))
        elbo += drift - normal_logpdf(means, module.node_mean_locs[:5], module.node_mean_scales[:5]).sum()
        nodes = torch.tensor([1, 2, 3, 4])
        elbo += beta_logpdf(values["sticks"], torch.ones(4), torch.ones(4))
        elbo -= beta_logpdf(values["sticks"], module.stick_a[nodes], module.stick_b[nodes])
    assert torch.allclose(loss, -elbo, rtol=1e-5, atol=1e-4), (loss, -elbo)


def test_posterior_responsibilities_are_distributions():
    module = tiny_hcrl(True)
    x = torch.rand(7, 5)
    with local_params(), torch.no_grad():
        paths = module.path_responsibilities(x)
        levels = module.level_responsibilities(x)
        leaves = module.leaf_log_proba(x).exp()
    assert paths.shape == (7, 5) and levels.shape == (7, 3) and leaves.shape == (7, 2)
    for p in (paths, levels, leaves):
        assert torch.allclose(p.sum(-1), torch.ones(7), atol=1e-5)


def test_grow_starts_the_new_branch_on_a_datum_of_its_inner_path():
    module = tiny_hcrl(True)
    x = torch.rand(10, 5)
    resp = torch.zeros(10, 5)
    resp[:5, 2] = 1.0  # the first five data on the inner path of the root, the rest on full path 0
    resp[5:, 0] = 1.0
    with local_params(), torch.no_grad():
        module.reset_path_observations()
        module.observe_path_responsibilities(x, resp)
        z = module.encoder.embed(x)
        new = module.grow(0)
        assert len(new) == 2 and module.tree.parent(new[0]) == 0
        spread = module.node_scales[0]
        distance = (module.node_locs[new[0]] - z).abs()  # 10 x d
        near = torch.all(distance <= 0.5 * spread + 1e-6, dim=-1)
        assert near[:5].any(), "the new branch does not start on a datum of its inner path"


def test_grow_anchor_is_drawn_in_proportion_to_the_responsibilities():
    """The Gumbel-max over an epoch picks datum n for path k with probability q(ζ_n = k) / Σ_m q(ζ_m = k)."""
    module = tiny_hcrl(True)
    x = torch.rand(3, 5)
    resp = torch.tensor([[0.0, 0.0, 0.6, 0.2, 0.2], [0.0, 0.0, 0.3, 0.5, 0.2], [0.0, 0.0, 0.1, 0.1, 0.8]])
    torch.manual_seed(0)
    with local_params(), torch.no_grad():
        z = module.encoder.embed(x)
        picks = []
        for _ in range(3000):
            module.reset_path_observations()
            module.observe_path_responsibilities(x[:2], resp[:2])  # two batches of one epoch
            module.observe_path_responsibilities(x[2:], resp[2:])
            picks.append(torch.cdist(module._anchors[1][2:3], z).argmin())
    frequency = torch.bincount(torch.stack(picks), minlength=3) / 3000.0
    assert torch.allclose(frequency, torch.tensor([0.6, 0.3, 0.1]), atol=0.03), frequency


@pytest.fixture(scope="module")
def synthetic():
    return pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=50, n_features=20, latent_dim=4, seed=0)


@pytest.mark.parametrize("name", ["hcrl2", "hcrl1", "vae_ncrp", "hcrl2-elbo"])
def test_fit_grows_a_valid_tree_and_round_trips(name, synthetic, tmp_path):
    # HCRL's default search is the ELBO's; "hcrl2" / "hcrl1" here run the paper's GROW / PRUNE / MERGE
    structure = dict(structure="elbo") if name.endswith("-elbo") else {} if name == "vae_ncrp" else dict(
        structure="paper")
    model = pyro_hc.get_model(name.removesuffix("-elbo"), depth=3, **TINY, lock_epochs=2, **structure).fit(
        synthetic, epochs=6, batch_size=32, seed=0, progress=False)
    tree = model.tree
    tree.check()
    if structure.get("structure") == "elbo":  # every proposal is logged with its ΔELBO; the accepted ones raised it
        moves = [event for event in tree.events if "delta_elbo" in event]
        assert moves and all(math.isfinite(event["delta_elbo"]) for event in moves)
        assert all(event["delta_elbo"] > 0 for event in moves if event["accepted"])
    else:
        # GROW fired (PRUNE or MERGE may have taken a path back since: on this tiny embedding a new
        # branch can take all the data of the old one)
        assert any(event["kind"] == "grow" for event in tree.events), "GROW never fired"
        assert len(tree.events) >= 2
    assert all(tree.level(leaf) == 2 for leaf in tree.leaves())  # every move left full paths of one depth
    proba = model.predict_proba(synthetic)
    assert proba.shape == (len(synthetic), len(tree.leaves()))
    scores = pyro_hc.evaluate(model, synthetic)  # synthetic_tree knows its hierarchy: the F-score reads it
    assert set(scores) == {"acc", "nmi", "ari", "dendrogram_purity", "leaf_purity", "f_score", "hierarchical_f_score"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    restored = load(model.save(tmp_path / "m.pt"))
    assert restored.tree.to_json() == tree.to_json()
    assert torch.allclose(restored.predict_proba(synthetic), proba, atol=1e-6)
    nll = model.negative_log_likelihood(synthetic.subset(torch.arange(20)), num_samples=5)
    assert math.isfinite(nll)
    assert math.isfinite(model.reconstruction_error(synthetic))
    node_ids, images = model.decode_nodes()
    assert node_ids == tree.nodes() and images.shape == (len(tree), synthetic.n_features)
    assert torch.all((images >= -10) & (images <= 10)) and not torch.allclose(images[0], images[-1])
    eta, q_level = model.level_proportions(synthetic), model.level_responsibilities(synthetic)
    for p in (eta, q_level):
        assert p.shape == (len(synthetic), 3) and torch.allclose(p.sum(-1), torch.ones(len(synthetic)), atol=1e-5)
    if name == "vae_ncrp":  # only its leaves emit
        assert torch.equal(eta, q_level) and bool((q_level[:, -1] == 1).all())


def test_stick_lr_factor_sets_how_far_the_sticks_move(synthetic):
    """The sticks' learning rate is their own: a tiny factor leaves q(v) at its prior Beta(1, γ).

    (The objective's paths are the full paths, so the sticks only move once there are two.)"""
    def fitted_stick_parameters(stick_lr_factor):
        model = pyro_hc.get_model("hcrl2", depth=3, **TINY, lock_epochs=100, stick_lr_factor=stick_lr_factor,
                                  structure="paper")
        model.fit(synthetic, epochs=4, batch_size=32, seed=0, progress=False)
        assert len(model.tree.leaves()) >= 2
        nodes = model.module_.active_sticks()
        return model.module_.stick_a.detach()[nodes], model.module_.stick_b.detach()[nodes]

    a, b = fitted_stick_parameters(1e-6)
    assert torch.allclose(a, torch.ones_like(a), atol=1e-3) and torch.allclose(b, torch.ones_like(b), atol=1e-3)
    a, b = fitted_stick_parameters(None)  # as the nodes: 10x the base rate, the sticks follow the data
    assert (a - 1).abs().max() > 0.1


def test_level_concentration_per_level_sets_the_laplace_prior_and_round_trips(synthetic, tmp_path):
    from pyro_hc.distributions import dirichlet_laplace_approximation

    model = pyro_hc.get_model("hcrl2", depth=3, **TINY, level_concentration=(0.25, 0.5, 4.0))
    model.fit(synthetic, epochs=1, batch_size=32, progress=False)
    loc, scale = dirichlet_laplace_approximation(torch.tensor([0.25, 0.5, 4.0]))
    assert torch.allclose(model.module_.level_prior_loc, loc) and torch.allclose(model.module_.level_prior_scale, scale)
    assert model.module_.level_prior_loc[2] > model.module_.level_prior_loc[0]  # the leaves favoured
    restored = load(model.save(tmp_path / "m.pt"))
    assert torch.allclose(restored.module_.level_prior_loc, loc)


@pytest.mark.parametrize("bad", [(1.0, 1.0), (1.0, -1.0, 1.0), 0.0, float("nan")])
def test_bad_level_concentration_is_rejected(synthetic, bad):
    with pytest.raises(ValueError, match="level_concentration"):
        pyro_hc.get_model("hcrl2", depth=3, level_concentration=bad).fit(synthetic, epochs=0, progress=False)


def test_bad_configuration_is_rejected(synthetic):
    with pytest.raises(ValueError, match="depth"):
        pyro_hc.get_model("hcrl2", depth=1).fit(synthetic, epochs=0, progress=False)
    with pytest.raises(ValueError, match="stick_lr_factor"):
        pyro_hc.get_model("hcrl2", stick_lr_factor=0.0).fit(synthetic, epochs=0, progress=False)
    with pytest.raises(ValueError, match="capacity"):
        pyro_hc.get_model("hcrl2", depth=4, capacity=3).fit(synthetic, epochs=0, progress=False)
    with pytest.raises(ValueError, match="structure"):
        pyro_hc.get_model("hcrl2", structure="greedy").fit(synthetic, epochs=0, progress=False)
    with pytest.raises(ValueError, match="mean_coupling"):
        pyro_hc.get_model("hcrl2", elbo_mean_coupling=0.0).fit(synthetic, epochs=0, progress=False)


def test_leaf_level_assignment_follows_the_leaves_where_the_path_posterior_follows_the_prior():
    """A datum the broad root explains: its path posterior q(ζ) is the sticks' prior (the heavy path),
    while q(ζ | l = leaf level) picks the leaf nearest to it."""
    module = tiny_hcrl(False)
    z = torch.tensor([[2.5, 3.0]])
    with local_params(), torch.no_grad():
        for node, loc, scale in [(0, (3.0, 10.0), 10.0), (1, (0.0, 0.0), 0.3), (2, (0.0, 0.0), 0.3),
                                 (3, (3.0, 0.0), 0.3), (4, (3.0, 0.0), 0.3)]:
            module.node_locs_unconstrained[node] = torch.tensor(loc)
            module.node_scales_unconstrained[node] = torch.full((2,), scale).log()
        module.stick_a_unconstrained[:] = 0.0
        module.stick_b_unconstrained[:] = 0.0
        module.stick_a_unconstrained[1] = math.log(9.0)  # v_1 ~ Beta(9, 1): path (0, 1, 2) takes 90 %
        module.embed = lambda x: z
        x = torch.rand(1, 5)
        by_path = module.leaf_log_proba(x).exp()[0]
        by_leaf = module.leaf_log_proba(x, given_leaf_level=True).exp()[0]
        assert module.level_responsibilities(x)[0, 0] > 0.99  # the root explains the datum
    assert by_path[0] > 0.85  # path (0, 1, 2): the prior's heavy path, far from the datum
    assert by_leaf[1] > 0.99  # leaf 4 at (3, 0), the nearer one


def test_leaf_assignment_is_checked_and_changes_no_fit(synthetic, tmp_path):
    with pytest.raises(ValueError, match="leaf_assignment"):
        pyro_hc.get_model("hcrl2", leaf_assignment="node").fit(synthetic, epochs=0, progress=False)
    settings = dict(depth=3, **TINY)
    fit = dict(epochs=2, batch_size=64, seed=0, progress=False, checkpoint=tmp_path / "fit.ckpt")
    model = pyro_hc.get_model("hcrl2", **settings).fit(synthetic, **fit)
    # a prediction-only setting: the finished fit resumes under the other value, the same model
    assert model.leaf_assignment == "leaf_level"  # the default
    other = pyro_hc.get_model("hcrl2", leaf_assignment="path", **settings).fit(synthetic, resume=True, **fit)
    assert other.tree.to_json() == model.tree.to_json()
    x = torch.as_tensor(synthetic.flat())
    leaves = torch.as_tensor(model.tree.leaves())
    for fitted, given_leaf_level in [(model, True), (other, False)]:
        with local_params(), torch.no_grad():
            expected = fitted.module_.leaf_log_proba(x, given_leaf_level=given_leaf_level).argmax(-1)
        assert torch.equal(fitted.predict(synthetic), leaves[expected])
    # two epochs in, the ancestors still explain much of the data: the two readings differ
    assert not torch.equal(model.predict(synthetic), other.predict(synthetic))
    with pytest.raises(ValueError, match="other depth"):  # a setting of the fit still has to match
        pyro_hc.get_model("hcrl2", **dict(settings, depth=4)).fit(synthetic, resume=True, **fit)
    model.set_params(leaf_assignment="nodes")
    with pytest.raises(ValueError, match="leaf_assignment"):
        model.predict(synthetic)


@pytest.mark.parametrize("per_datum_levels", [True, False])
def test_closed_form_responsibilities_equal_pyro_enumeration_marginals(per_datum_levels):
    """q(ζ_n) (over the full paths), q(l_n) at the guide means agree with TraceEnum_ELBO.compute_marginals."""
    module = tiny_hcrl(per_datum_levels)
    x = torch.rand(6, 5)
    with local_params(), torch.no_grad():
        nodes = module.active_sticks()
        fixed = {"z": module.encoder.embed(x), "sticks": module.expected_sticks()[nodes],
                 "level_logits": module.level_encoder(x)[0] if per_datum_levels else module.level_loc}
        # the model with the continuous latents observed at the guide means; ζ and l enumerated
        marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(
            poutine.condition(module.model, data=fixed), lambda x: None, x)
        assert torch.allclose(marginals["path"].probs, module.leaf_log_proba(x).exp(), atol=1e-5)
        assert torch.allclose(marginals["level"].probs, module.level_responsibilities(x), atol=1e-5)


def test_kmeans_ward_tree_recovers_a_clear_hierarchy_from_the_true_latents():
    from pyro_hc.baselines import kmeans_ward_tree
    from pyro_hc.metrics import dendrogram_purity

    data = pyro_hc.synthetic_tree(depth=2, branching=3, noise=0.3, separation=6.0, n_per_leaf=30, seed=1)
    tree, leaves = kmeans_ward_tree(data.latent, 9)
    assert sorted(tree.leaves()) == list(range(9)) and tree.root == 16
    assert all(len(tree.children(node)) == 2 for node in tree.internal_nodes())
    assert dendrogram_purity(tree, leaves, data.y.numpy()) == pytest.approx(1.0)
    # each coarse group's three fine clusters are exactly the leaves of one subtree
    label_of_leaf = {leaf: int(np.bincount(data.y.numpy()[leaves == leaf]).argmax()) for leaf in range(9)}
    subtrees = {frozenset(label_of_leaf[leaf] for leaf in tree.subtree_leaves(node)) for node in tree.internal_nodes()}
    for group in range(3):  # labels are numbered left to right, three per coarse group
        assert frozenset(range(3 * group, 3 * group + 3)) in subtrees
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_ward_tree(data.latent, 1)
    with pytest.raises(ValueError, match="finite"):
        kmeans_ward_tree(torch.full((4, 2), float("nan")), 2)


def test_leaves_ward_tree_links_given_leaves_by_their_centroids():
    """A clustering's own leaves (ids in any order, here the true fine labels scrambled) re-linked by
    Ward's method: the coarse groups come back as subtrees, and the leaves are those given."""
    from pyro_hc.baselines import leaves_ward_tree
    from pyro_hc.metrics import dendrogram_purity

    data = pyro_hc.synthetic_tree(depth=2, branching=3, noise=0.3, separation=6.0, n_per_leaf=30, seed=1)
    labels = data.y.numpy()
    scrambled = np.array([17, 3, 40, 8, 99, 5, 61, 2, 11])[labels]  # any ids
    tree, leaves = leaves_ward_tree(data.latent, scrambled)
    assert sorted(tree.leaves()) == list(range(9)) and len(tree.internal_nodes()) == 8
    assert np.array_equal(np.unique(scrambled)[leaves], scrambled)  # leaf i is the i-th smallest id
    # scored on the coarse classes (three fine labels each, numbered left to right), purity 1 needs the
    # grouping: each coarse class's three leaves under one subtree
    coarse = labels // 3
    assert dendrogram_purity(tree, leaves, coarse) == pytest.approx(1.0)
    # the grouping is read off the points: with the points shuffled against the leaves it is lost
    shuffled = data.latent[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert dendrogram_purity(*leaves_ward_tree(shuffled, scrambled), coarse) < 0.9
    with pytest.raises(ValueError, match="two clusters"):
        leaves_ward_tree(data.latent, np.zeros(len(labels), dtype=int))
    with pytest.raises(ValueError, match=r"\[N\] assignments"):
        leaves_ward_tree(data.latent, labels[:-1])


@pytest.mark.slow
def test_hcrl2_recovers_a_hierarchy_on_synthetic_tree_data():
    """Three coarse clusters of three leaves each; HCRL2 (depth 3) grows its tree from one path.

    The data are emitted by the leaves only, so the level prior is leaf-heavy, Dirichlet(0.1, 0.2, 8):
    with the symmetric Dirichlet(1) the internal nodes act as extra fine clusters and GROW
    fragments the coarse groups (dendrogram purity 0.47 over seeds 0-2, against 0.73 here).
    Measured on this machine (CPU, 60 epochs, seed 0): dendrogram purity 0.71, NMI 0.84 (0.79 / 0.88
    before the inner paths left the objective and the sticks and Adam rows were fixed; over seeds
    0-2 the mean went 0.73 -> 0.76), against k-means + Ward 0.96 — the paper's GROW / PRUNE / MERGE
    do not reach the baseline (``structure="elbo"`` does better: see the next test) (a leaf that
    covers two fine clusters is never split; ``benchmarks/hierarchy_recovery.py`` measures the gap
    at three noise levels, with an oracle that clusters the true latents). What is asserted is
    what a broken model, heuristic, level prior or metric would lose.

    Spread, measured 2026-12-07 (2-core CPU, one thread), fit seeds 0-9: dendrogram purity 0.707 /
    0.865 / 0.707 / 0.823 / 0.730 / 0.696 / 0.744 / 0.711 / 0.796 / 0.676 (random leaves 0.114 ..
    0.117), NMI 0.841 / 0.913 / 0.855 / 0.911 / 0.893 / 0.862 / 0.889 / 0.859 / 0.895 / 0.851, 8 .. 14
    leaves, leaf-level share 0.877 .. 0.970. The purity bar was 0.65 (0.026 below seed 9); it is 0.6,
    0.076 below the worst seed and still above the symmetric prior's 0.47; NMI > 0.75 sits 0.09 below
    the worst, the leaf-level share's 0.8 0.077 below.
    """
    from pyro_hc.baselines import kmeans_ward_tree
    from pyro_hc.metrics import dendrogram_purity, nmi

    # tiny networks: a second intra-op thread only adds synchronisation (and stalls badly when
    # another process holds the other core)
    torch.set_num_threads(1)
    data = pyro_hc.synthetic_tree(depth=2, branching=3, noise=0.5, separation=4.0, n_per_leaf=60, seed=0)
    labels = data.y.numpy()
    model = pyro_hc.get_model("hcrl2", depth=3, latent_dim=4, hidden_dims=(64,), pretrain_epochs=30,
                              lock_epochs=5, stick_concentration=3.0, level_concentration=(0.1, 0.2, 8.0),
                              structure="paper")
    model.fit(data, epochs=60, batch_size=32, seed=0, progress=False)
    assigned = model.predict(data).numpy()
    purity = dendrogram_purity(model.tree, assigned, labels)
    random_assignment = np.random.RandomState(0).choice(model.tree.leaves(), size=len(labels))
    random_purity = dendrogram_purity(model.tree, random_assignment, labels)
    baseline_tree, baseline_leaves = kmeans_ward_tree(data.flat(), data.n_classes)
    baseline = dendrogram_purity(baseline_tree, baseline_leaves, labels)
    print(f"HCRL2 DP {purity:.3f} (random {random_purity:.3f}), k-means+Ward DP {baseline:.3f}, "
          f"NMI {nmi(labels, assigned):.3f}, {model.tree}")
    assert len(model.tree.leaves()) >= 6
    assert purity > 0.6 and purity > 4 * random_purity
    assert nmi(labels, assigned) > 0.75
    # the leaves carry the data, not the internal nodes: the leaf-heavy prior took effect (0.88 at
    # seed 0 since the inner paths left the objective; 1/3 under a symmetric prior)
    assert model.level_responsibilities(data).mean(0)[-1] > 0.8


def test_a_branch_grown_after_a_prune_comes_after_its_older_sibling():
    """Freed ids are reused, but the stick-breaking orders siblings by creation (bug: by id)."""
    module = tiny_hcrl(True)  # paths (0, 1, 2) and (0, 3, 4)
    assert module.prune(2) == [2, 1]
    assert module.grow(0) == [1, 2]  # the new branch reuses the freed ids
    v = torch.tensor([0.5, 0.2, 0.5, 0.7, 0.6, 0.5, 0.5, 0.5])
    probs = module.path_index().log_path_probs(v).exp()
    paths = module.tree.paths()
    assert probs[paths.index((0, 3, 4))] == pytest.approx(0.7 * 0.6)  # the older branch: π_3 = v_3
    assert probs[paths.index((0, 1, 2))] == pytest.approx(0.2 * (1 - 0.7) * 0.5)  # π_1 = v_1 (1 - v_3)


@pytest.mark.parametrize("optimizer", ["adam", "clipped_adam"])
def test_reset_rows_make_adam_step_as_if_the_rows_were_new(optimizer):
    """After reset_optimizer_rows, row 0 follows a fresh Adam fed the same gradients; row 1 is untouched."""
    from pyro.optim.clipped_adam import ClippedAdam

    from pyro_hc.infer.row_reset import reset_optimizer_rows

    def make(params):
        return torch.optim.Adam(params, lr=0.01) if optimizer == "adam" else ClippedAdam(params, lr=0.01)

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(2, 3))
    opt = make([weight])
    gradients = torch.randn(80, 2, 3) * torch.tensor([[1.0], [30.0]])
    for g in gradients[:50]:
        weight.grad = g.clone()
        opt.step()
    fresh = torch.nn.Parameter(weight.detach()[0].clone())
    fresh_opt = make([fresh])
    untouched = torch.nn.Parameter(weight.detach()[1].clone())
    untouched_opt = make([untouched])
    untouched_opt.load_state_dict({"state": {0: {k: (v[1].clone() if torch.is_tensor(v) and v.dim() else
                                                     v.clone() if torch.is_tensor(v) else v)
                                                 for k, v in opt.state[weight].items()}},
                                   "param_groups": [dict(opt.state_dict()["param_groups"][0], params=[0])]})
    reset_optimizer_rows(opt, weight, [0])
    for g in gradients[50:]:
        weight.grad, fresh.grad, untouched.grad = g.clone(), g[0].clone(), g[1].clone()
        opt.step(), fresh_opt.step(), untouched_opt.step()
        assert torch.allclose(weight.detach()[0], fresh.detach(), atol=1e-6)
        assert torch.allclose(weight.detach()[1], untouched.detach(), atol=1e-6)


def test_grown_rows_take_adams_first_step():
    """A branch grown at epoch end starts Adam afresh: its first update is ≈ lr per coordinate
    (stale state: zero moments with the shared step count give ≈ 0.5 lr here, 3-6 lr later on)."""
    from pyro_hc.heuristics import NCRPHeuristics
    from pyro_hc.infer import SVIEngine

    torch.manual_seed(0)
    with local_params():
        module = HCRLModule(n_features=5, latent_dim=2, hidden_dims=(4,), likelihood="bernoulli", depth=3,
                            capacity=8, stick_concentration=1.0, level_concentration=1.0, per_datum_levels=True)
        with torch.no_grad():  # v_1 ≈ 0: the root's inner path holds the data, so GROW branches there
            module.stick_a_unconstrained[1] = math.log(1e-4)
            module.stick_b_unconstrained[1] = math.log(1e4)
        grow = NCRPHeuristics(grow_every=1, lock_epochs=100, enabled_moves=("grow",), seed=0)
        engine = SVIEngine(module, loss="trace_enum", lr=0.01, callbacks=[grow], progress=False)
        x = torch.rand(40, 5)
        engine.fit(x, epochs=1, batch_size=4, seed=0)  # 10 steps, then GROW
        assert module.tree.children(0) == [1, 3]
        engine.callbacks = [engine.history]  # no more moves
        before = module.node_locs_unconstrained.detach().clone()
        engine.fit(x, epochs=1, batch_size=40, seed=0)  # one step
        step = (module.node_locs_unconstrained.detach() - before)[[3, 4]].abs()
    assert torch.allclose(step, torch.full_like(step, 0.01), rtol=0.02), step


@pytest.mark.parametrize("per_datum_levels", [True, False])
def test_no_gradient_reaches_an_internal_node_through_an_inner_path(per_datum_levels):
    """With the level observed at the leaves, an internal node u could only emit through an inner
    path (which reused u's Gaussian below u): its parameters' gradient must be exactly zero."""
    module = tiny_hcrl(per_datum_levels)  # internal nodes 0, 1, 3; leaves 2, 4
    x = torch.rand(6, 5)
    leaf_level = torch.full((6,), 2, dtype=torch.long)
    with local_params():
        model = poutine.condition(module.model, data={"level": leaf_level})
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, module.guide, x)
        loss.backward()
    for name in ("node_locs_unconstrained", "node_scales_unconstrained"):
        grad = getattr(module, name).grad
        assert torch.equal(grad[[0, 1, 3]], torch.zeros_like(grad[[0, 1, 3]])), (name, grad)
        assert bool((grad[[2, 4]] != 0).all())  # the leaves do train
    # the inner paths are still scored, for GROW's proposals
    with torch.no_grad():
        proposals = module.path_responsibilities(x)
    assert proposals.shape == (6, 5) and bool((proposals[:, 2:] > 0).all())


# ELBO-tested structure moves ---------------------------------------------------------------------

def brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, q_nodes=None, q_sticks=None,
                          data_weight=1.0):
    """The embedding-space ELBO by its definition, one datum, path, level and node at a time.

    q(μ_i, λ_i) and q(v_c) default to their closed-form optima; pass them (dicts node -> NormalGamma
    / (α, β)) to evaluate elsewhere. ``data_weight`` ζ: the coarsened ELBO, every datum's term
    (and so its part of the optimal q's statistics) weighed by ζ, the priors' KL terms not.
    """
    from torch.distributions import Beta, kl_divergence

    from pyro_hc.distributions import sibling_order

    paths = tree.paths()
    n, k_paths, levels = resp.shape
    node_weights = {node: torch.zeros(n, dtype=resp.dtype) for node in tree.nodes()}
    for i in range(n):
        for k, path in enumerate(paths):
            for level in range(levels):
                node_weights[path[level]][i] = node_weights[path[level]][i] + resp[i, k, level]
    if q_nodes is None:
        q_nodes = {}
        for node, w in node_weights.items():
            w = data_weight * w
            stats = (w.sum(), w @ z_loc, w @ (z_loc**2 + z_var))
            q_nodes[node] = prior.posterior(*stats)
    mass = {node: resp.new_zeros(()) for node in tree.nodes()}
    for k, path in enumerate(paths):
        for node in path:
            mass[node] = mass[node] + data_weight * resp[:, k, :].sum()
    if q_sticks is None:
        q_sticks = {}
        for parent in tree.internal_nodes():
            children = sibling_order(tree, parent)
            for position, child in enumerate(children):
                later = sum((mass[c] for c in children[position + 1:]), resp.new_zeros(()))
                q_sticks[child] = (1 + mass[child], gamma + later)
    e_log_v = {c: torch.digamma(a) - torch.digamma(a + b) for c, (a, b) in q_sticks.items()}
    e_log_1mv = {c: torch.digamma(b) - torch.digamma(a + b) for c, (a, b) in q_sticks.items()}
    elbo = resp.new_zeros(())
    for k, path in enumerate(paths):
        log_path = resp.new_zeros(())
        for node in path[1:]:
            siblings = sibling_order(tree, tree.parent(node))
            log_path = log_path + e_log_v[node] + sum((e_log_1mv[j] for j in siblings[: siblings.index(node)]),
                                                      resp.new_zeros(()))
        for i in range(n):
            for level in range(levels):
                r = resp[i, k, level]
                ell = q_nodes[path[level]].expected_log_likelihood(z_loc[i], z_var[i]).sum()
                elbo = elbo + data_weight * (r * (ell + log_path + log_eta[i, level])
                                             - (r * torch.log(r) if r > 0 else 0.0))
    for node, q in q_nodes.items():
        elbo = elbo - kl_divergence(q, prior).sum()
    for child, (a, b) in q_sticks.items():
        elbo = elbo - kl_divergence(Beta(a, b), Beta(torch.tensor(1.0, dtype=a.dtype), torch.tensor(gamma, dtype=a.dtype)))
    return elbo


def tiny_structure_problem(seed=0):
    from pyro_hc.distributions import NormalGamma
    from pyro_hc.models._ncrp import add_child_in_order, chain_tree

    generator = torch.Generator().manual_seed(seed)
    tree = chain_tree(3)  # 0 -> 1 -> 2
    add_child_in_order(tree, 1)  # leaf 3
    n, d = 7, 2
    resp = torch.rand(n, 2, 3, generator=generator, dtype=torch.float64) + 0.05
    resp = resp / resp.sum((1, 2), keepdim=True)
    z_loc = torch.randn(n, d, generator=generator, dtype=torch.float64)
    z_var = torch.rand(n, d, generator=generator, dtype=torch.float64) * 0.3 + 0.05
    log_eta = torch.log_softmax(torch.randn(n, 3, generator=generator, dtype=torch.float64), -1)
    prior = NormalGamma(torch.tensor([0.1, -0.2], dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64),
                        torch.tensor(1.5, dtype=torch.float64), torch.tensor([0.7, 1.2], dtype=torch.float64))
    return tree, resp, z_loc, z_var, log_eta, prior, 1.7


def test_tree_elbo_closed_form_equals_the_brute_force_elbo():
    from pyro_hc.heuristics.elbo_moves import tree_elbo
    from pyro_hc.distributions import path_index

    tree, resp, z_loc, z_var, log_eta, prior, gamma = tiny_structure_problem()
    path_nodes = path_index(tree, capacity=8).path_nodes[:2]
    closed = tree_elbo(tree, path_nodes, resp, z_loc, z_var, log_eta, prior, gamma)
    assert float(closed) == pytest.approx(float(brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma)),
                                          rel=1e-9, abs=1e-8)


def test_closed_form_node_and_stick_posteriors_are_stationary_points_of_the_elbo():
    from pyro_hc.distributions import NormalGamma

    tree, resp, z_loc, z_var, log_eta, prior, gamma = tiny_structure_problem(1)
    base = brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma)
    # the optimal q's, as free leaves of the graph
    q_nodes, leaves = {}, []
    for node in tree.nodes():
        w = torch.zeros(resp.shape[0], dtype=resp.dtype)
        for k, path in enumerate(tree.paths()):
            for level in range(3):
                if path[level] == node:
                    w = w + resp[:, k, level]
        post = prior.posterior(w.sum(), w @ z_loc, w @ (z_loc**2 + z_var))
        params = [t.detach().clone().requires_grad_() for t in (post.loc, post.precision_scale, post.concentration, post.rate)]
        leaves += params
        q_nodes[node] = NormalGamma(*params)
    masses = {c: resp[:, [k for k, p in enumerate(tree.paths()) if c in p], :].sum() for c in tree.nodes()}
    q_sticks = {1: (1 + masses[1], gamma + 0 * masses[1]), 2: (1 + masses[2], gamma + masses[3]), 3: (1 + masses[3], gamma + 0 * masses[3])}
    q_sticks = {c: tuple(t.detach().clone().requires_grad_() for t in ab) for c, ab in q_sticks.items()}
    leaves += [t for ab in q_sticks.values() for t in ab]
    elbo = brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, q_nodes, q_sticks)
    assert float(elbo.detach()) == pytest.approx(float(base), rel=1e-10)
    grads = torch.autograd.grad(elbo, leaves)
    assert max(float(g.abs().max()) for g in grads) < 1e-8
    # and a nudge away from them lowers the ELBO
    nudged = {node: NormalGamma(q.loc + 0.1, q.precision_scale, q.concentration, q.rate) for node, q in q_nodes.items()}
    assert float(brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, nudged, q_sticks).detach()) < float(elbo.detach())


def test_conjugate_nodes_are_each_nodes_posterior_mean_and_spread():
    """``conjugate_nodes``: under independent Normal–Gamma priors, each node's ``E μ`` and ``(E λ)^{-1/2}``
    from what it emits (hand-summed over its (path, level) cells); under ``TreeNodePrior``, the
    coordinate ascent's means, which a parent's children pull towards themselves."""
    from pyro_hc.heuristics.elbo_moves import TreeNodePrior, conjugate_nodes, tree_node_posterior

    tree, resp, z_loc, z_var, log_eta, prior, gamma = tiny_structure_problem(4)
    gaussians = conjugate_nodes(tree, resp, z_loc, z_var, prior)
    assert sorted(gaussians) == sorted(tree.nodes())
    stats = {}
    for node in tree.nodes():
        w = sum(resp[:, k, level] for k, path in enumerate(tree.paths()) for level in range(3) if path[level] == node)
        stats[node] = (w.sum(), w @ z_loc, w @ (z_loc**2 + z_var))
        post = prior.posterior(*stats[node])
        mean, std = gaussians[node]
        assert torch.allclose(mean, post.loc, rtol=1e-10) and torch.allclose(std, (post.rate / post.concentration).sqrt())
    coupled = TreeNodePrior(prior, coupling=2.0)
    nodes = tree.nodes()
    parents = torch.as_tensor([-1 if tree.parent(u) is None else nodes.index(tree.parent(u)) for u in nodes])
    count, sum_z, sum_z2 = (torch.stack([stats[u][i] for u in nodes]) for i in range(3))
    _, loc, _, concentration, rate = tree_node_posterior(parents, count, sum_z, sum_z2, coupled)
    tied = conjugate_nodes(tree, resp, z_loc, z_var, coupled)
    for i, node in enumerate(nodes):
        assert torch.allclose(tied[node][0], loc[i].to(z_loc)) and torch.allclose(tied[node][1], (rate[i] / concentration[i]).sqrt().to(z_loc))
    assert not torch.allclose(tied[1][0], gaussians[1][0])  # the coupling moves the internal node's mean


def test_closed_form_nodes_are_set_every_epoch_and_take_no_svi_step():
    """``elbo_nodes="closed_form"``: the SVI steps never move a node Gaussian, every epoch's end sets
    them (they differ between epochs), and the node parameters train again after the fit."""
    from pyro_hc.infer import Callback

    class Recorder(Callback):
        def __init__(self):
            self.epochs, self.changed = 0, 0

        def on_epoch_start(self, state):
            module = state.module
            self.at_start = module.node_locs_unconstrained.detach().clone(), module.node_scales_unconstrained.detach().clone()
            if self.epochs and not torch.equal(self.at_start[0], self.previous):
                self.changed += 1

        def on_step_end(self, state):
            module = state.module
            assert torch.equal(module.node_locs_unconstrained, self.at_start[0])
            assert torch.equal(module.node_scales_unconstrained, self.at_start[1])

        def on_epoch_end(self, state):
            self.epochs += 1
            self.previous = self.at_start[0]

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 3, 3, 3, 0, 0], [-3, -3, -3, -3, 0, 0], [0, 0, 0, 0, 4, -4]])
    x = centres[torch.arange(3).repeat_interleave(60)] + 0.5 * torch.randn(180, 6, generator=generator)
    recorder = Recorder()
    model = pyro_hc.get_model("hcrl2", depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=5, capacity=16,
                              likelihood="gaussian", elbo_nodes="closed_form", elbo_sticks="closed_form")
    model.fit(x, epochs=4, batch_size=32, seed=0, progress=False, callbacks=[recorder])
    assert recorder.epochs == 4 and recorder.changed >= 2
    assert model.module_.node_locs_unconstrained.requires_grad and model.module_.node_scales_unconstrained.requires_grad
    # the statistics read E z² with the encoder's variance only when asked
    assert not model.heuristics().encoder_variance
    assert model.set_params(elbo_encoder_variance=True).heuristics().encoder_variance
    with pytest.raises(ValueError, match="elbo_nodes"):
        pyro_hc.get_model("hcrl2", likelihood="gaussian", elbo_nodes="exact").fit(x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="structure='elbo'"):
        pyro_hc.get_model("hcrl2", likelihood="gaussian", structure="paper", elbo_nodes="closed_form").fit(
            x, epochs=1, progress=False)


def test_svi_then_closed_form_nodes_train_by_svi_until_the_switch_and_take_no_step_after():
    """``elbo_nodes="svi_then_closed_form"``: before epoch ``ceil(f · epochs)`` the SVI steps move the
    node Gaussians; from it on no step does (every epoch's end sets them in closed form), and the
    node parameters train again after the fit. It is the ELBO search's default; ``"svi"`` trains them
    by SVI to the end (the paper's search's default), and the switch needs the ELBO search's statistics."""
    from pyro_hc.infer import Callback

    class Recorder(Callback):
        def __init__(self):
            self.moved_by_steps = []

        def on_epoch_start(self, state):  # after the epoch-end moves and closed forms of the last epoch
            self.moved, self.last = False, state.module.node_locs_unconstrained.detach().clone()

        def on_step_end(self, state):
            now = state.module.node_locs_unconstrained.detach().clone()
            self.moved |= not torch.equal(now, self.last)
            self.last = now

        def on_epoch_end(self, state):
            self.moved_by_steps.append(self.moved)

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 3, 3, 3, 0, 0], [-3, -3, -3, -3, 0, 0], [0, 0, 0, 0, 4, -4]])
    x = centres[torch.arange(3).repeat_interleave(60)] + 0.5 * torch.randn(180, 6, generator=generator)
    config = dict(depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=2, capacity=16, likelihood="gaussian")
    recorder = Recorder()
    model = pyro_hc.get_model("hcrl2", **config, elbo_nodes="svi_then_closed_form", elbo_closed_form_from=0.5)
    assert not model.heuristics().closed_form_nodes  # the structure callback starts with SVI nodes
    model.fit(x, epochs=5, batch_size=32, seed=0, progress=False, callbacks=[recorder])
    assert recorder.moved_by_steps == [True, True, True, False, False]  # the switch at ceil(0.5 · 5) = 3
    assert model.module_.node_locs_unconstrained.requires_grad and model.module_.node_scales_unconstrained.requires_grad
    svi = Recorder()
    pyro_hc.get_model("hcrl2", **config, elbo_nodes="svi").fit(x, epochs=3, batch_size=32, seed=0, progress=False,
                                                              callbacks=[svi])
    assert svi.moved_by_steps == [True, True, True]
    assert pyro_hc.get_model("hcrl2")._node_update() == "svi_then_closed_form"  # the default
    assert pyro_hc.get_model("hcrl2", structure="paper")._node_update() == "svi"
    for bad in (0.0, 1.0, True):
        with pytest.raises(ValueError, match="elbo_closed_form_from"):
            pyro_hc.get_model("hcrl2", likelihood="gaussian", elbo_closed_form_from=bad).fit(x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="structure='elbo'"):
        pyro_hc.get_model("hcrl2", likelihood="gaussian", structure="paper", elbo_nodes="svi_then_closed_form").fit(
            x, epochs=1, progress=False)


def test_closed_form_nodes_read_the_encoder_variance_whatever_the_moves_read():
    """The nodes' global step fits ``E z² = z̄² + s²`` under ``q(z|x)`` (the point Gaussians SVI would fit
    to sampled z), while the moves score ``z̄`` as points (``encoder_variance=False``). From ``z̄``
    alone every spread comes out narrower, the encoder follows the narrower nodes, and the embedding
    collapses (on the digits with the switch: DP 0.248 against 0.556 with this step, seed 0)."""
    from types import SimpleNamespace

    from pyro_hc.heuristics.elbo_moves import ELBOStructureMoves, conjugate_nodes, node_prior
    from pyro_hc.infer.callbacks import FitState

    module = tiny_hcrl(True)
    x = torch.rand(24, 5, generator=torch.Generator().manual_seed(3))
    moves = ELBOStructureMoves(closed_form_nodes=True, lock_epochs=100)  # the global step only, no move
    state = FitState(engine=SimpleNamespace(module=module, optimizer=None), num_data=24)
    with local_params(), torch.no_grad():
        loc, scale = module.encoder(x)
        joint = module.joint_log_responsibilities(x, z=loc)
        resp = torch.softmax(joint.reshape(24, -1), -1).reshape(joint.shape)
        prior = node_prior(loc, torch.zeros_like(loc))  # the callback's default: independent node priors
        expected = conjugate_nodes(module.tree, resp, loc, scale.square(), prior)
        points = conjugate_nodes(module.tree, resp, loc, torch.zeros_like(loc), prior)
        moves.on_epoch_start(state)
        state.batch_x, state.batch_index = x, torch.arange(24)
        moves.on_step_end(state)
        state.batch_x = state.batch_index = None
        moves.on_epoch_end(state)
        for node, (mean, std) in expected.items():
            assert torch.allclose(module.node_locs[node], mean, atol=1e-5)
            assert torch.allclose(module.node_scales[node], std.clamp_min(1e-3), atol=1e-5)
            assert bool((std > points[node][1]).all())  # the encoder's variance widens every node


@pytest.mark.parametrize("data_weight", [1.0, 0.3])  # 0.3: the coarsened ELBO (tests/test_coarsening.py)
def test_birth_and_merge_delta_elbo_equal_the_difference_of_brute_force_elbos(data_weight):
    from pyro_hc.heuristics.elbo_moves import birth_delta, merge_delta, refined_birth_delta
    from pyro_hc.models._ncrp import add_child_in_order

    tree, resp, z_loc, z_var, log_eta, prior, gamma = tiny_structure_problem(2)
    weighted = dict(data_weight=data_weight)
    before = brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, **weighted)
    split = torch.rand(resp.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # birth on path (0, 1, 2): leaf 2 keeps `split` of each datum's share of the path, a new leaf the rest
    delta = birth_delta(tree, 0, split, resp, z_loc, z_var, prior, gamma, **weighted)
    grown = tree.copy()
    new = add_child_in_order(grown, 1)
    rows = {path: resp[:, k] for k, path in enumerate(tree.paths())}
    rows[(0, 1, new)] = rows[(0, 1, 2)] * (1 - split[:, None])
    rows[(0, 1, 2)] = rows[(0, 1, 2)] * split[:, None]
    resp_after = torch.stack([rows[path] for path in grown.paths()], 1)
    after = brute_force_tree_elbo(grown, resp_after, z_loc, z_var, log_eta, prior, gamma, **weighted)
    assert float(delta) == pytest.approx(float(after - before), rel=1e-8, abs=1e-8)
    # without refinement the callback's ΔELBO is the same; the refined one scores valid q's too
    unrefined, _ = refined_birth_delta(tree, 0, split, resp, z_loc, z_var, log_eta, prior, gamma, steps=0, **weighted)
    assert float(unrefined) == pytest.approx(float(delta), rel=1e-8, abs=1e-8)
    refined, weights = refined_birth_delta(tree, 0, split, resp, z_loc, z_var, log_eta, prior, gamma, steps=3,
                                           **weighted)
    assert math.isfinite(float(refined)) and weights.shape == (resp.shape[0], 2)
    # merge of leaf 3 into leaf 2 (the reverse kind of move), on the original tree
    delta = merge_delta(tree, 0, 1, resp, z_loc, z_var, prior, gamma, **weighted)
    merged = tree.copy()
    merged.remove_leaf(3)
    after = brute_force_tree_elbo(merged, (resp[:, 0] + resp[:, 1])[:, None], z_loc, z_var, log_eta, prior, gamma,
                                  **weighted)
    assert float(delta) == pytest.approx(float(after - before), rel=1e-8, abs=1e-8)


def test_elbo_structure_splits_separated_blobs_and_refuses_to_merge_them_back():
    """Three separated blobs, one leaf at the start: the births raise the ELBO (accepted) until there
    is a leaf per blob, and merging two of them would lower it (rejected). Independent node priors:
    the leaf moves alone (with child means centred on the parent's, the coarse moves take turns)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 3, 3, 3, 0, 0], [-3, -3, -3, -3, 0, 0], [0, 0, 0, 0, 4, -4]])
    labels = torch.arange(3).repeat_interleave(60)
    config = dict(depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=5, capacity=16, structure="elbo",
                  likelihood="gaussian", level_concentration=(0.1, 0.2, 8.0), elbo_mean_coupling=None,
                  init_tree="path")  # one leaf at the start
    x = centres[labels] + 0.5 * torch.randn(180, 6, generator=generator)
    model = pyro_hc.get_model("hcrl2", **config).fit(x, epochs=4, batch_size=32, seed=0, progress=False)
    births = [e for e in model.tree.events if e["kind"] in ("birth", "ancestor_birth") and e["accepted"]]
    merges = [e for e in model.tree.events if e["kind"] == "merge"]
    assert births and births[0]["delta_elbo"] > 10 and len(model.tree.leaves()) == 3
    assert merges and not any(e["accepted"] for e in merges) and all(e["delta_elbo"] < 0 for e in merges)
    # the moves score in float64; the Gaussians and sticks they place go back in the model's own dtype
    assert {p.dtype for p in model.module_.parameters()} == {torch.float32}


@pytest.mark.slow
def test_hcrl2_elbo_structure_recovers_the_fine_clusters_on_synthetic_tree_data():
    """The recovery test's setting at HCRL2's defaults (the ELBO search): not told the number of leaves.

    The defaults start from a k-means + Ward tree of the pretrained embedding, sized by the search's
    ELBO (``init_tree="embedding"``; child means centred on the parent's, κ = 1; node Gaussians by SVI
    for 40 epochs, in closed form after). Spread, measured 2026-12-07 (2-core CPU, one thread, 30 + 60
    epochs), fit seeds 0-9: dendrogram purity 0.917 / 0.826 / 0.886 / 0.850 / 0.915 / 0.950 / 0.965 /
    0.825 / 0.911 / 0.949 (mean 0.899), k-means + Ward on each run's embedding given the true k
    0.917 .. 0.946, purity - baseline -0.107 .. +0.021, NMI 0.948 / 0.889 / 0.901 / 0.927 / 0.935 /
    0.959 / 0.970 / 0.900 / 0.934 / 0.957, leaves 9 / 9 / 11 / 8 / 10 / 9 / 9 / 8 / 9 / 9, three level-1
    nodes (four at seed 2). From Algorithm 1's single path (``init_tree="path"``, the default before)
    the same seeds gave 0.955 / 0.936 / 0.898 / 0.838 / 0.958 / 0.950 / 0.975 / 0.946 / 0.917 / 0.954
    (mean 0.933): on this cell the single path does better; on the digits the embedding start groups
    the leaves and the single path does not (README, ``benchmarks/hcrl_digits.py``).

    Re-measured 2026-12-07 (session 8; the moves scored in float64, same machine and budget), seeds 0-9,
    with each datum on its leaf-level path (``leaf_assignment="leaf_level"``, the default since):
    DP 0.943 / 0.917 / 0.917 / 0.856 / 0.954 / 0.958 / 0.970 / 0.832 / 0.911 / 0.954 (mean 0.921;
    by the path posterior q(ζ) 0.920 / 0.848 / 0.917 / 0.846 / 0.954 / 0.950 / 0.965 / 0.825 / 0.911 /
    0.949, mean 0.909), NMI 0.906 .. 0.974, 8 / 9 / 11 leaves, own k-means + Ward 0.917 .. 0.946. Issue
    15's "DP ≥ 0.9 at noise 0.5" holds for 8 of these 10 seeds; the two below it (0.856, 0.832) have 8
    leaves, two true clusters in one: a seed-pinned assert at 0.9 would hold or fail with the tree's
    shape, not with a margin, so it is not made at one seed. Asserted, each with margin over the worst
    seed: DP > 0.75 (0.082), DP > baseline - 0.15 (0.050), NMI > 0.85 (0.056), 7-14 leaves (the truth is
    9). A collapse (DP 1/9, NMI 0), random leaves, a search that never grows (1 leaf) or one that runs
    away (capacity 128) still fails.
    """
    from pyro_hc.baselines import kmeans_ward_tree
    from pyro_hc.metrics import dendrogram_purity, nmi

    torch.set_num_threads(1)
    data = pyro_hc.synthetic_tree(depth=2, branching=3, noise=0.5, separation=4.0, n_per_leaf=60, seed=0)
    labels = data.y.numpy()
    model = pyro_hc.get_model("hcrl2", depth=3, latent_dim=4, hidden_dims=(64,), pretrain_epochs=30)  # defaults
    model.fit(data, epochs=60, batch_size=32, seed=0, progress=False)
    purity = dendrogram_purity(model.tree, model.predict(data).numpy(), labels)
    baseline_tree, baseline_leaves = kmeans_ward_tree(model.transform(data), data.n_classes)
    baseline = dendrogram_purity(baseline_tree, baseline_leaves, labels)
    score = nmi(labels, model.predict(data).numpy())
    print(f"HCRL2 (elbo) DP {purity:.3f}, k-means + Ward on its embedding {baseline:.3f}, NMI {score:.3f}, "
          f"{model.tree}")
    assert purity > 0.75 and purity > baseline - 0.15, (purity, baseline)
    assert score > 0.85
    assert 7 <= len(model.tree.leaves()) <= 14
    moves = [event for event in model.tree.events if "delta_elbo" in event]
    assert all(event["delta_elbo"] > 0 for event in moves if event["accepted"])


def test_conjugate_sticks_are_one_plus_the_mass_through_and_gamma_plus_the_later_siblings_mass():
    from pyro_hc.heuristics.elbo_moves import conjugate_sticks

    tree, resp, *_, gamma = tiny_structure_problem(4)  # 0 -> 1 -> {2, 3}, paths (0, 1, 2) and (0, 1, 3)
    mass_2, mass_3 = resp[:, 0].sum(), resp[:, 1].sum()
    sticks = conjugate_sticks(tree, resp, gamma)
    expected = {1: (1 + mass_2 + mass_3, gamma), 2: (1 + mass_2, gamma + mass_3), 3: (1 + mass_3, gamma)}
    assert set(sticks) == set(expected)
    for node, (a, b) in expected.items():
        assert float(sticks[node][0]) == pytest.approx(float(a), rel=1e-12)
        assert float(sticks[node][1]) == pytest.approx(float(b), rel=1e-12)


def test_closed_form_sticks_are_the_conjugate_update_of_each_epoch_and_take_no_svi_step():
    """``elbo_sticks="closed_form"``: after every epoch that left the tree as it was, ``q(v)`` is the
    conjugate update of that epoch's responsibilities (recomputed here step by step, as the callback
    memoizes them), the SVI steps never move it, and the sticks train again after the fit."""
    from pyro_hc.heuristics.elbo_moves import conjugate_sticks
    from pyro_hc.infer import Callback

    class Recorder(Callback):
        def __init__(self):
            self.checked = 0

        def on_epoch_start(self, state):
            module = state.module
            self.version, self.resp = module.tree.version, torch.zeros(state.num_data, 0)
            self.sticks = module.stick_a.detach().clone(), module.stick_b.detach().clone()
            self.rows = {}

        @torch.no_grad()
        def on_step_end(self, state):
            module = state.module
            assert torch.equal(module.stick_a, self.sticks[0]) and torch.equal(module.stick_b, self.sticks[1])
            joint = module.joint_log_responsibilities(state.batch_x, z=module.encoder(state.batch_x)[0])
            resp = torch.softmax(joint.reshape(joint.shape[0], -1), -1).reshape(joint.shape)
            for i, row in zip(state.batch_index.tolist(), resp):
                self.rows[i] = row

        @torch.no_grad()
        def on_epoch_end(self, state):
            module = state.module
            if module.tree.version != self.version:  # a move re-initialised some sticks
                return
            resp = torch.stack([self.rows[i] for i in sorted(self.rows)])
            for node, (a, b) in conjugate_sticks(module.tree, resp, module.stick_concentration).items():
                assert float(module.stick_a[node]) == pytest.approx(float(a), rel=1e-4)
                assert float(module.stick_b[node]) == pytest.approx(float(b), rel=1e-4)
            self.checked += 1

    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 3, 3, 3, 0, 0], [-3, -3, -3, -3, 0, 0], [0, 0, 0, 0, 4, -4]])
    x = centres[torch.arange(3).repeat_interleave(60)] + 0.5 * torch.randn(180, 6, generator=generator)
    recorder = Recorder()
    model = pyro_hc.get_model("hcrl2", depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=5, capacity=16,
                              likelihood="gaussian", level_concentration=(0.1, 0.2, 8.0), elbo_sticks="closed_form",
                              elbo_mean_coupling=None, init_tree="path")
    model.fit(x, epochs=4, batch_size=32, seed=0, progress=False, callbacks=[recorder])
    assert recorder.checked >= 2 and len(model.tree.leaves()) == 3  # the blobs' three leaves, as with SVI sticks
    # after the last epoch's update every active stick holds the data: a = 1 + the mass through its node
    assert float(model.module_.stick_a[model.tree.children(0)[0]].detach()) == pytest.approx(1 + 180, rel=1e-4)
    assert model.module_.stick_a_unconstrained.requires_grad and model.module_.stick_b_unconstrained.requires_grad
    with pytest.raises(ValueError, match="elbo_sticks"):
        pyro_hc.get_model("hcrl2", likelihood="gaussian", elbo_sticks="exact").fit(x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="structure='elbo'"):
        pyro_hc.get_model("hcrl2", likelihood="gaussian", structure="paper", elbo_sticks="closed_form").fit(
            x, epochs=1, progress=False)

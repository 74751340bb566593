"""pyro_hc.inspect: InferenceData dims and coords against the tree and the data, ArviZ on it, the
responsibilities of a draw against the closed forms, posterior-predictive images."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import torch

import pyro_hc
from pyro_hc import NotFittedError
from pyro_hc.infer import local_params
from pyro_hc.inspect import (node_embeddings, node_prototypes, path_names, reconstruct_by_level, sample_node,
                             to_inference_data)

TINY_NCRP = dict(depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=1, capacity=16, lock_epochs=1)
TINY_KDVAE = dict(n_clusters=4, latent_dim=2, hidden_dims=(16,), epochs=1, warmup_epochs=1, vade_epochs=1,
                  vade_pretrain_epochs=1, vade_hidden_dims=(16,))
FIT = dict(batch_size=64, seed=0, progress=False)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)  # tiny networks: one thread is fastest and leaves the other core alone
    return pyro_hc.load_dataset("digits").subset(torch.arange(300))


@pytest.fixture(scope="module")
def fitted(data):
    # HCRL with the paper's GROW / PRUNE / MERGE, which branches within these 4 tiny epochs
    paper = {"hcrl2": {"structure": "paper"}, "hcrl1": {"structure": "paper"}, "vae_ncrp": {}}
    models = {name: pyro_hc.get_model(name, **TINY_NCRP, **paper[name]).fit(data, epochs=4, **FIT)
              for name in ("hcrl2", "hcrl1", "vae_ncrp")}
    for name in ("hcrl2", "hcrl1", "vae_ncrp"):
        assert len(models[name].tree.leaves()) >= 2, f"{name}: GROW never fired; the tests need a branching tree"
    models["vade"] = pyro_hc.get_model("vade", n_clusters=5, latent_dim=3, hidden_dims=(16,),
                                       pretrain_epochs=1).fit(data, epochs=1, **FIT)
    models["kdvae"] = pyro_hc.get_model("kdvae", **TINY_KDVAE).fit(data, **FIT)
    models["kdvae_soft"] = pyro_hc.get_model("kdvae", objective="soft", **TINY_KDVAE).fit(data, **FIT)
    models["vae"] = pyro_hc.get_model("vae", latent_dim=2, hidden_dims=(16,)).fit(data, epochs=1, **FIT)
    return models


@pytest.fixture(scope="module")
def small(data):
    return data.subset(torch.arange(40))


@pytest.fixture(scope="module")
def idatas(fitted, small):
    return {name: to_inference_data(model, small, num_samples=6, num_chains=2, seed=1)
            for name, model in fitted.items() if name != "vae"}


def coord(idata, group, name):
    return getattr(idata, group)[name].values.tolist()


@pytest.mark.parametrize("name", ["hcrl2", "hcrl1", "vae_ncrp"])
def test_ncrp_dims_and_coords_match_the_tree_and_the_data(name, fitted, idatas, small):
    model, idata = fitted[name], idatas[name]
    tree = model.tree
    post = idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 6
    assert coord(idata, "posterior", "stick_node") == [n for n in tree.nodes() if n != tree.root]
    assert post["v"].dims == ("chain", "draw", "stick_node")
    assert len(path_names(tree)) == len(tree.leaves()) + len(tree.internal_nodes())
    # VAE-nCRP's path variable covers the inner paths (its new-branch predictive); HCRL's only the full paths
    n_paths = len(path_names(tree)) if name == "vae_ncrp" else len(tree.leaves())
    assert coord(idata, "posterior", "path") == path_names(tree)[:n_paths]
    assert post["path_responsibility"].dims == ("chain", "draw", "datum", "path")
    assert coord(idata, "posterior", "leaf") == tree.leaves()
    assert coord(idata, "posterior", "datum") == list(range(len(small)))
    assert post["z"].dims == ("chain", "draw", "datum", "latent") and post.sizes["latent"] == model.latent_dim
    const = idata.constant_data
    assert coord(idata, "constant_data", "node") == tree.nodes()
    assert const["parent"].values.tolist() == [-1 if tree.parent(n) is None else tree.parent(n) for n in tree.nodes()]
    assert const["node_level"].values.tolist() == [tree.level(n) for n in tree.nodes()]
    assert np.array_equal(const["label"].values, small.y.numpy())
    if name == "vae_ncrp":  # q(α_i) is a distribution: its draws vary around the guide's means
        assert post["node_mean"].dims == ("chain", "draw", "node", "latent")
        assert coord(idata, "posterior", "node") == tree.nodes()
        draws = post["node_mean"].values.reshape(-1, len(tree), model.latent_dim)
        assert draws.std(0).min() > 0
    else:
        assert post["level_responsibility"].dims == ("chain", "draw", "datum", "level")
        assert coord(idata, "posterior", "level") == list(range(model.depth))
        expected = ("chain", "draw", "datum", "level") if name == "hcrl2" else ("chain", "draw", "level")
        assert post["eta"].dims == expected
        means = model.module_.node_locs[torch.as_tensor(tree.nodes())].detach().numpy()
        assert np.allclose(const["node_mean"].values, means)


@pytest.mark.parametrize("name", ["hcrl2", "hcrl1", "vae_ncrp", "vade", "kdvae", "kdvae_soft"])
def test_proportions_and_responsibilities_are_distributions(name, idatas):
    post = idatas[name].posterior
    names = [v for v in ("eta", "level_responsibility", "path_responsibility", "leaf_proba") if v in post]
    assert "leaf_proba" in names
    for var in names:
        values = post[var].values
        assert np.all(values >= 0), var
        assert np.allclose(values.sum(-1), 1.0, atol=1e-6), f"{var} does not sum to 1 over {post[var].dims[-1]}"
    if "path_responsibility" in post:  # the leaves' posterior is the full paths' part, renormalised
        n_full = post.sizes["leaf"]
        full = post["path_responsibility"].values[..., :n_full]
        assert np.allclose(post["leaf_proba"].values, full / full.sum(-1, keepdims=True))
    if name == "kdvae":  # the hard objective's guide is a point mass on the best cluster (Eq. 5)
        assert set(np.unique(post["leaf_proba"].values)) <= {0.0, 1.0}


def test_a_draw_gives_the_closed_form_responsibilities_of_its_own_latents(fitted, small):
    """HCRL2: q(ζ, l | v, h, z) from the stored draw equals Eq. 3's path prior x η x node Gaussians.

    Small batches: a draw samples the global sticks once and every batch is conditioned on them, so
    the stored v explains the responsibilities of the data in every batch.
    """
    model = fitted["hcrl2"]
    post = to_inference_data(model, small, num_samples=4, num_chains=2, batch_size=7, seed=3).posterior
    module = model.module_
    paths = module.path_index()
    chain, draw = 1, 3
    v = torch.as_tensor(post["v"].values[chain, draw])
    z = torch.as_tensor(post["z"].values[chain, draw])
    eta = torch.as_tensor(post["eta"].values[chain, draw])
    with torch.no_grad(), local_params():
        sticks = torch.full((module.capacity,), 0.5, dtype=torch.float64)
        sticks[module.active_sticks()] = v
        log_path = paths.log_path_probs(sticks)[: paths.n_full]  # HCRL's objective: the full paths
        node = paths.path_nodes[: paths.n_full]
        locs, scales = module.node_locs.double()[node], module.node_scales.double()[node]
        component = torch.distributions.Normal(locs, scales).log_prob(z[:, None, None, :]).sum(-1)
        joint = log_path[:, None] + torch.log(eta)[:, None, :] + component
        joint = joint - torch.logsumexp(joint, dim=(-2, -1), keepdim=True)
    assert np.allclose(post["path_responsibility"].values[chain, draw], joint.logsumexp(-1).exp(), atol=1e-4)
    assert np.allclose(post["level_responsibility"].values[chain, draw], joint.logsumexp(-2).exp(), atol=1e-4)


def test_a_one_leaf_tree_has_a_point_mass_path_and_the_closed_form_levels(data, small):
    """A tree with one path (an HCRL2 fit before any move) used to fail inside Pyro's contraction, which
    cannot target a size-1 enumeration dim: its path is now a point mass and the levels still
    come from the draw (η × the path's node Gaussians at the stored z)."""
    model = pyro_hc.get_model("hcrl2", **TINY_NCRP, init_tree="path").fit(data, epochs=0, **FIT)
    assert len(model.tree.leaves()) == 1
    post = to_inference_data(model, small, num_samples=3, num_chains=2, seed=0).posterior
    assert post["path_responsibility"].shape == (2, 3, len(small), 1)
    assert np.all(post["path_responsibility"].values == 1) and np.all(post["leaf_proba"].values == 1)
    module = model.module_
    z = torch.as_tensor(post["z"].values[1, 2])
    eta = torch.as_tensor(post["eta"].values[1, 2])
    with torch.no_grad():
        node = module.path_index().path_nodes[0]
        component = torch.distributions.Normal(module.node_locs.double()[node], module.node_scales.double()[node]
                                               ).log_prob(z[:, None, :]).sum(-1)
        expected = torch.softmax(torch.log(eta) + component, -1)
    assert np.allclose(post["level_responsibility"].values[1, 2], expected, atol=1e-4)


def test_vade_cluster_posterior_of_a_draw_is_p_c_given_that_z(fitted, idatas):
    model, post = fitted["vade"], idatas["vade"].posterior
    z = torch.as_tensor(post["z"].values[0, 2], dtype=torch.float32)
    with torch.no_grad(), local_params():
        expected = model.module_.cluster_log_posterior(z).exp()
    assert np.allclose(post["leaf_proba"].values[0, 2], expected, atol=1e-5)
    const = idatas["vade"].constant_data
    assert const["cluster_mean"].dims == ("leaf", "latent")
    assert np.isclose(const["mixture_weight"].values.sum(), 1.0)


def test_arviz_summary_and_diagnostics_run(idatas):
    summary = az.summary(idatas["hcrl2"], var_names=["v"])
    assert len(summary) == idatas["hcrl2"].posterior.sizes["stick_node"]
    assert np.all(np.isfinite(summary["r_hat"])) and np.all(summary["ess_bulk"] > 0)
    stats = az.summary(idatas["hcrl1"], var_names=["eta", "v"], kind="stats")
    assert list(stats.index[:3]) == ["eta[0]", "eta[1]", "eta[2]"]
    assert np.isclose(stats.loc[["eta[0]", "eta[1]", "eta[2]"], "mean"].sum(), 1.0, atol=1e-3)
    az.summary(idatas["vade"], var_names=["leaf_proba"], coords={"datum": [0, 1]}, kind="stats")


def test_draws_are_seeded_and_leave_the_global_random_state_alone(fitted, small):
    model = fitted["vade"]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = to_inference_data(model, small, num_samples=2, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    second = to_inference_data(model, small, num_samples=2, seed=7)
    other = to_inference_data(model, small, num_samples=2, seed=8)
    assert np.array_equal(first.posterior["z"].values, second.posterior["z"].values)
    assert not np.array_equal(first.posterior["z"].values, other.posterior["z"].values)


def test_posterior_predictive_holds_decoded_draws_beside_the_data(fitted, small):
    idata = to_inference_data(fitted["vade"], small, num_samples=2, predictive=True)
    x = idata.posterior_predictive["x"]
    assert x.dims == ("chain", "draw", "datum", "feature") and x.shape[-1] == 64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert np.allclose(idata.observed_data["x"].values, small.flat().numpy())


def test_models_without_a_posterior_and_unfitted_models_are_refused(data, small):
    kdae = pyro_hc.get_model("kdae", **TINY_KDVAE).fit(data, **FIT)
    with pytest.raises(TypeError, match="no posterior"):
        to_inference_data(kdae, small)
    with pytest.raises(NotFittedError, match="not fitted"):
        to_inference_data(pyro_hc.get_model("hcrl2"), small)
    with pytest.raises(TypeError, match="ClusterEstimator"):
        to_inference_data(object(), small)
    for fn in (node_prototypes, node_embeddings):
        with pytest.raises(NotFittedError):
            fn(pyro_hc.get_model("vade"))


@pytest.mark.parametrize("name", ["hcrl2", "vae_ncrp", "vade", "kdvae", "vae"])
def test_sample_node_generates_images_from_any_node_it_has(name, fitted):
    model = fitted[name]
    tree = model.tree
    nodes = [tree.root] if name == "vae" else [tree.root, tree.leaves()[-1]]
    if name in ("hcrl2", "vae_ncrp"):
        nodes.append(tree.children(tree.root)[0])  # internal nodes generate too
    for node in nodes:
        images = sample_node(model, node, n=5, seed=0)
        assert images.shape == (5, 1, 8, 8)
        assert torch.all((images >= 0) & (images <= 1))
        assert not torch.allclose(images[0], images[1]), "five draws of one node came out identical"
        assert torch.equal(images, sample_node(model, node, n=5, seed=0))
    with pytest.raises(ValueError, match="not in the model's tree"):
        sample_node(model, 999)


def test_node_prototypes_and_embeddings(fitted):
    nodes, images = node_prototypes(fitted["hcrl2"])
    assert nodes == fitted["hcrl2"].tree.nodes() and images.shape == (len(nodes), 1, 8, 8)
    nodes, means = node_embeddings(fitted["vade"])
    weights = fitted["vade"].module_.mixture_logits.softmax(-1).detach()
    locs = fitted["vade"].module_.cluster_locs.detach()
    assert nodes == [0, 1, 2, 3, 4, 5]
    assert torch.allclose(means[0], (weights[:, None] * locs).sum(0)) and torch.allclose(means[1:], locs)
    assert node_embeddings(fitted["kdvae"]) is None  # one latent space per cluster
    assert node_prototypes(fitted["kdvae"])[0] == fitted["kdvae"].tree.leaves()
    with pytest.raises(TypeError, match="no node means"):
        node_prototypes(fitted["vae"])


def test_reconstruct_by_level_decodes_the_node_means_along_each_path(fitted, small):
    model = fitted["hcrl2"]
    tree = model.tree
    nodes, images = reconstruct_by_level(model, small)
    assert nodes.shape == (len(small), tree.depth() + 1) and images.shape == (len(small), tree.depth() + 1, 1, 8, 8)
    assert torch.all(nodes[:, 0] == tree.root)
    assert torch.equal(nodes[:, -1], model.predict(small))
    for row in range(0, len(small), 13):
        assert tuple(nodes[row].tolist()) == tuple(tree.ancestors(int(nodes[row, -1])))
    ids, decoded = model.decode_nodes()
    assert torch.equal(images[5, 1], decoded[ids.index(int(nodes[5, 1]))])
    with pytest.raises(TypeError, match="node"):
        reconstruct_by_level(fitted["kdvae"], small)  # k-DVAE has no mean for the root

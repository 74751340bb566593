"""VaDE: the ELBO against a hand computation, MAP assignments, persistence, independence, quality."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate, infer_discrete
from sklearn.cluster import KMeans

import pyro_hc
from pyro_hc.estimator import NotFittedError
from pyro_hc.infer import local_params
from pyro_hc.models import VaDEModule, load
from pyro_hc.metrics import cluster_acc, nmi

from .conftest import TINY_VADE


def normal_log_density(value, loc, scale):
    return -0.5 * math.log(2 * math.pi) - torch.log(scale) - (value - loc) ** 2 / (2 * scale**2)


def hand_elbo(module: VaDEModule, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-datum ELBO with c summed out, written from the generative story (no Pyro)."""
    with local_params():
        return _hand_elbo(module, x, z)


def _hand_elbo(module: VaDEModule, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1)
    logits = module.decoder(z)
    prob = torch.sigmoid(logits)
    log_px = (x * torch.log(prob) + (1 - x) * torch.log1p(-prob)).sum(-1)
    weights = torch.softmax(module.mixture_logits, -1)
    # log Σ_c π_c Π_j N(z_j; μ_cj, σ_cj)
    per_cluster = torch.stack([
        torch.log(weights[c]) + normal_log_density(z, module.cluster_locs[c], module.cluster_scales[c]).sum(-1)
        for c in range(weights.shape[0])
    ], -1)
    log_pz = torch.logsumexp(per_cluster, -1)
    loc, scale = module.encoder(x)
    log_qz = normal_log_density(z, loc, scale).sum(-1)
    return log_px + log_pz - log_qz


@pytest.fixture
def tiny_module():
    torch.manual_seed(3)
    with local_params():
        module = VaDEModule(n_features=6, n_clusters=3, latent_dim=2, hidden_dims=(5,), likelihood="bernoulli")
    with torch.no_grad():  # make the mixture non-trivial
        module.mixture_logits_unconstrained.copy_(torch.tensor([0.3, -0.5, 0.1]))
        module.cluster_scales_unconstrained.copy_(torch.randn(3, 2) * 0.3)
    return module


def pyro_loss_and_z(module, x, index=None, num_data=None, seed=11):
    """Pyro's TraceEnum_ELBO loss and the z the guide drew for it (same RNG state)."""
    with local_params():
        pyro.set_rng_seed(seed)
        z = poutine.trace(module.guide).get_trace(x, index, num_data).nodes["z"]["value"]
        pyro.set_rng_seed(seed)
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(module.model, module.guide, x, index, num_data)
    return loss, z


def test_elbo_matches_hand_computation(tiny_module):
    x = torch.rand(7, 6)
    loss, z = pyro_loss_and_z(tiny_module, x)
    expected = -hand_elbo(tiny_module, x, z).sum()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5), (loss, expected)


def test_elbo_scales_minibatch_by_data_size(tiny_module):
    x = torch.rand(4, 6)
    index = torch.tensor([2, 5, 7, 9])
    loss, z = pyro_loss_and_z(tiny_module, x, index=index, num_data=40)
    expected = -hand_elbo(tiny_module, x, z).sum() * 40 / 4
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-4)


def test_elbo_gradients_reach_every_parameter(tiny_module):
    loss, _ = pyro_loss_and_z(tiny_module, torch.rand(5, 6))
    loss.backward()
    for name, param in tiny_module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_infer_discrete_map_agrees_with_closed_form_posterior(tiny_module):
    x = torch.rand(20, 6)
    with torch.no_grad(), local_params():
        z = tiny_module.encoder.embed(x)
    conditioned = poutine.condition(config_enumerate(tiny_module.model), data={"z": z})
    with local_params():
        trace = poutine.trace(infer_discrete(conditioned, first_available_dim=-2, temperature=0)).get_trace(x)
    map_clusters = trace.nodes["cluster"]["value"]
    with local_params():
        closed_form = tiny_module.cluster_log_posterior(z).argmax(-1)
    assert torch.equal(map_clusters, closed_form)


def test_predict_proba_is_a_distribution_over_leaves(tiny_vade, digits):
    proba = tiny_vade.predict_proba(digits)
    assert proba.shape == (len(digits), 10)
    assert torch.allclose(proba.sum(-1), torch.ones(len(digits)), atol=1e-5)
    pred = tiny_vade.predict(digits)
    leaves = tiny_vade.tree.leaves()
    assert set(pred.tolist()) <= set(leaves)
    assert torch.equal(pred, torch.as_tensor(leaves)[proba.argmax(-1)])
    assert tiny_vade.transform(digits).shape == (len(digits), TINY_VADE["latent_dim"])


def test_flat_tree_has_one_leaf_per_cluster(tiny_vade):
    tree = tiny_vade.tree
    assert len(tree.leaves()) == 10 and tree.depth() == 1
    assert all(tree.parent(leaf) == tree.root for leaf in tree.leaves())


def test_save_load_round_trip_gives_identical_predictions(tiny_vade, digits, tmp_path):
    path = tiny_vade.save(tmp_path / "vade.pt")
    restored = load(path)
    assert restored.get_params() == tiny_vade.get_params()
    assert torch.equal(restored.predict(digits), tiny_vade.predict(digits))
    assert torch.allclose(restored.predict_proba(digits), tiny_vade.predict_proba(digits), atol=1e-6)
    assert restored.tree.to_json() == tiny_vade.tree.to_json()
    assert restored.history_.records == tiny_vade.history_.records


def test_two_models_in_one_process_stay_independent(digits):
    pyro.clear_param_store()  # a test may clear it; library code never does
    first = pyro_hc.get_model("vade", **TINY_VADE).fit(digits, epochs=1, seed=1, progress=False)
    before = first.predict_proba(digits)
    state_before = {k: v.clone() for k, v in first.module_.state_dict().items()}
    pyro_hc.get_model("vade", **TINY_VADE).fit(digits, epochs=2, seed=2, progress=False)
    assert torch.equal(first.predict_proba(digits), before)
    for key, value in first.module_.state_dict().items():
        assert torch.equal(value, state_before[key]), key
    assert len(pyro.get_param_store()) == 0, "models must not write into Pyro's global parameter store"


def test_same_seed_same_result(digits):
    small = digits.subset(torch.arange(300))
    a = pyro_hc.get_model("vade", **TINY_VADE).fit(small, epochs=1, seed=5, progress=False)
    b = pyro_hc.get_model("vade", **TINY_VADE).fit(small, epochs=1, seed=5, progress=False)
    assert torch.equal(a.predict_proba(small), b.predict_proba(small))
    assert a.history_["loss"] == b.history_["loss"]


def test_history_records_both_phases(tiny_vade):
    phases = tiny_vade.history_["phase"]
    assert phases == ["pretrain", "pretrain", "train", "train"]
    assert all(np.isfinite(tiny_vade.history_["loss"]))


def test_unfitted_model_raises_clear_error(digits):
    model = pyro_hc.get_model("vade")
    for method in (model.predict, model.predict_proba, model.transform):
        with pytest.raises(NotFittedError, match="not fitted"):
            method(digits)
    with pytest.raises(NotFittedError):
        model.tree


def test_bad_inputs_are_rejected(tiny_vade, digits):
    with pytest.raises(ValueError, match="64 features"):
        tiny_vade.predict(torch.rand(5, 10))
    bad = digits.x[:5].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny_vade.predict(bad)
    with pytest.raises(ValueError, match="n_clusters"):
        pyro_hc.get_model("vade", n_clusters=5000).fit(digits, epochs=0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        pyro_hc.get_model("vade").fit(digits, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="unknown model"):
        pyro_hc.get_model("vadee")


def test_gaussian_likelihood_trains(digits):
    small = digits.subset(torch.arange(200))
    model = pyro_hc.get_model("vade", **{**TINY_VADE, "likelihood": "gaussian"})
    model.fit(small, epochs=2, seed=0, progress=False)
    assert model.module_.decoder.likelihood == "gaussian"
    assert np.isfinite(model.history_["loss"]).all()


@pytest.mark.slow
def test_default_vade_beats_kmeans_on_raw_digits(digits):
    """The acceptance check: paper-sized VaDE at its default settings vs k-means on the pixels."""
    torch.set_num_threads(2)
    labels = digits.y.numpy()
    kmeans = KMeans(10, n_init=10, random_state=0).fit_predict(digits.flat().numpy())
    model = pyro_hc.get_model("vade").fit(digits, seed=0, progress=False)
    scores = pyro_hc.evaluate(model, digits)
    print(f"VaDE {scores}; k-means acc={cluster_acc(labels, kmeans):.4f} nmi={nmi(labels, kmeans):.4f}")
    assert scores["acc"] > cluster_acc(labels, kmeans)
    assert scores["nmi"] > nmi(labels, kmeans)


def test_training_checkpoints_load_as_models(digits, tmp_path):
    from pyro_hc.infer import CheckpointEvery

    small = digits.subset(torch.arange(200))
    model = pyro_hc.get_model("vade", **TINY_VADE).fit(
        small, epochs=2, seed=0, progress=False, callbacks=[CheckpointEvery(tmp_path / "ck.pt")])
    restored = load(tmp_path / "ck.pt")  # written after the last epoch of the main phase
    assert torch.equal(restored.predict(small), model.predict(small))
    assert restored.tree.to_json() == model.tree.to_json()

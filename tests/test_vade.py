"""VaDE: the ELBO against a hand computation, MAP assignments, persistence, independence, quality."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate, infer_discrete
from sklearn.mixture import GaussianMixture

import pyro_hc
from pyro_hc.estimator import NotFittedError
from pyro_hc.infer import Callback, local_params
from pyro_hc.models import VaDE, VaDEModule, load
from pyro_hc.models.pretrain import LayerwiseDenoisingPretraining
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


def test_history_records_both_phases_and_the_init(tiny_vade):
    phases = tiny_vade.history_["phase"]
    assert phases == ["pretrain", "pretrain", "init", "train", "train"]
    assert all(np.isfinite(tiny_vade.history_["loss"]))
    init = tiny_vade.history_.records[2]
    assert "acc" not in init and init["init_selection"] is None  # no labels; the paper's single GMM by default
    (candidate,) = init["candidates"]
    assert init["selected"] == 0 and candidate["score"] == init["gmm_log_likelihood"]
    assert init["loss"] == init["autoencoder_loss"] > 0 and np.isfinite(init["gmm_log_likelihood"])


def test_init_quality_is_recorded_and_monitor_labels_never_steer_training(digits):
    small = digits.subset(torch.arange(300))
    # the paper's single GMM (no selection), so that the fit with epochs=0 stops exactly at the start
    config = {**TINY_VADE, "pretrain_epochs": 1, "lr_decay_every": 2, "init_candidates": 1}
    watched = VaDE(**config).fit(small, epochs=3, seed=4, progress=False, monitor_labels=small.y)
    blind = VaDE(**config).fit(small, epochs=3, seed=4, progress=False)
    assert torch.equal(watched.predict_proba(small), blind.predict_proba(small))  # labels only watched
    init = next(r for r in watched.history_.records if r["phase"] == "init")
    # the autoencoder's loss is recomputed on all the data: -log p(x | enc(x)) per datum
    start = VaDE(**config).fit(small, epochs=0, seed=4, progress=False)  # stops where the main phase begins
    module = start.module_
    with torch.no_grad(), local_params():
        flat = small.flat()
        expected = module.decoder.reconstruction_loss(module.encoder.embed(flat), flat).mean()
    assert init["autoencoder_loss"] == pytest.approx(float(expected), rel=1e-5)
    # the GMM's log-likelihood and ACC / NMI are those of the mixture VaDE starts from
    labels = small.y.numpy()
    assigned = start.predict(small).numpy()
    assert init["acc"] == pytest.approx(cluster_acc(labels, assigned), abs=0.01)
    assert init["nmi"] == pytest.approx(nmi(labels, assigned), abs=0.01)
    embedding = start.transform(small).double().numpy()
    gmm = GaussianMixture(10, covariance_type="diag", n_init=10, reg_covar=1e-4, random_state=4).fit(embedding)
    assert init["gmm_log_likelihood"] == pytest.approx(gmm.score(embedding), rel=1e-6)
    # the main phase logs ACC / NMI every lr_decay_every epochs and at its end
    train = [r for r in watched.history_.records if r["phase"] == "train"]
    assert ["acc" in r for r in train] == [False, True, True]
    assert train[-1]["acc"] == pytest.approx(cluster_acc(labels, watched.predict(small).numpy()))
    with pytest.raises(ValueError, match="monitor_labels"):
        VaDE(**config).fit(small, epochs=0, progress=False, monitor_labels=small.y[:10])


def _planted_mixtures(embedding, seed, n_components, shifts):
    """A fitted GMM, then copies of it whose means are shifted away from the data by ``shifts``."""
    fitted = GaussianMixture(n_components, covariance_type="diag", reg_covar=1e-4, random_state=seed).fit(embedding)
    planted = []
    for shift in shifts:
        gmm = copy.deepcopy(fitted)
        gmm.means_ = fitted.means_ + shift * embedding.std(0)
        gmm.heldout_log_likelihood_ = float(gmm.score(embedding))
        planted.append(gmm)
    return planted


class PlantedVaDE(VaDE):
    """VaDE whose candidate GMMs are planted: the unshifted one (index 2) is the best start."""

    shifts = (8.0, 4.0, 0.0, 16.0)

    def _candidate_mixtures(self, embedding, seed, n):
        return _planted_mixtures(embedding, seed, self.n_clusters, self.shifts)


@pytest.mark.parametrize("selection", ["elbo", "heldout_likelihood"])
def test_selection_keeps_the_candidate_with_the_best_label_free_score(digits, selection):
    small = digits.subset(torch.arange(300))
    config = {**TINY_VADE, "pretrain_epochs": 3, "init_candidates": 4, "init_selection": selection,
              "selection_epochs": 1}
    model = PlantedVaDE(**config).fit(small, epochs=0, seed=0, progress=False, monitor_labels=small.y)
    init = next(r for r in model.history_.records if r["phase"] == "init")
    scores = [c["score"] for c in init["candidates"]]
    assert len(scores) == 4 and init["selected"] == int(np.argmax(scores)) == 2
    assert init["selection_score"] == max(scores) and init["init_selection"] == selection
    assert len(set(scores)) == 4  # the candidates really were scored apart
    assert [r["phase"] for r in model.history_.records] == ["pretrain"] * 3 + ["init"]  # warm-ups not recorded
    module = model.module_
    if selection == "heldout_likelihood":  # the kept mixture is exactly the winner's, no warm-up
        embedding = model.transform(small).double().numpy()
        winner = _planted_mixtures(embedding, 0, 10, PlantedVaDE.shifts)[2]
        assert np.allclose(module.cluster_locs.detach().numpy(), winner.means_, atol=1e-5)
        assert init["selection_score"] == pytest.approx(winner.score(embedding))
    else:  # the kept state is the warmed-up winner: its ELBO, recomputed with the same noise, is the score
        with torch.random.fork_rng(), torch.no_grad(), local_params():
            torch.manual_seed(0)
            elbo = module.log_importance_weights(small.x, 4).mean(0).mean()
        assert float(elbo) == pytest.approx(init["selection_score"], rel=1e-4)
        assert "acc_after_warmup" in init["candidates"][0]


def test_selection_over_autoencoder_seeds_and_bad_settings(digits):
    small = digits.subset(torch.arange(200))
    model = VaDE(**{**TINY_VADE, "pretrain_epochs": 1, "autoencoder_candidates": 2, "init_candidates": 2,
                    "selection_epochs": 1}).fit(small, epochs=1, seed=0, progress=False)
    init = next(r for r in model.history_.records if r["phase"] == "init")
    assert [(c["autoencoder"], c["gmm"]) for c in init["candidates"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({c["autoencoder_loss"] for c in init["candidates"]}) == 2  # two different autoencoders
    assert model.history_["phase"] == ["pretrain", "init", "train"]  # only the winner's pretraining kept
    for bad, match in [({"init_selection": "best"}, "init_selection"), ({"init_candidates": 0}, "init_candidates"),
                       ({"pretrain": "greedy"}, "pretrain"), ({"adam_eps": 0.0}, "adam_eps"),
                       ({"init_selection": "heldout_likelihood", "autoencoder_candidates": 2}, "one embedding")]:
        with pytest.raises(ValueError, match=match):
            VaDE(**{**TINY_VADE, **bad}).fit(small, epochs=0, progress=False)


def test_keras_optimiser_options_set_adam_eps_and_floor_the_decayed_lr(digits):
    small = digits.subset(torch.arange(200))
    seen = []

    class Eps(Callback):
        def on_step_end(self, state):
            seen.append({g["eps"] for g in state.engine.optimizer.param_groups})

    model = VaDE(**{**TINY_VADE, "pretrain_epochs": 1, "lr": 2e-3, "lr_decay": 0.5, "lr_decay_every": 1,
                    "lr_floor": 4e-4, "adam_eps": 1e-4}).fit(small, epochs=5, seed=0, progress=False, callbacks=[Eps()])
    lrs = [r["lr"] for r in model.history_.records if r["phase"] == "train"]
    assert lrs == pytest.approx([1e-3, 5e-4, 4e-4, 4e-4, 4e-4])  # max(lr * decay, floor) after each epoch
    assert seen and all(eps == {1e-4} for eps in seen)


def test_stacked_pretraining_trains_one_layer_pair_at_a_time(digits):
    small = digits.subset(torch.arange(200))
    with local_params():
        module = VaDEModule(64, 10, 4, (32, 16), "bernoulli")
    layer = LayerwiseDenoisingPretraining(module.encoder, module.decoder, depth=1, corruption=0.0)
    x = small.flat()[:20]
    with local_params():
        trace = poutine.trace(layer.model).get_trace(x)
        h1 = torch.relu(module.encoder.trunk[0](x))
        code = torch.relu(module.encoder.trunk[2](h1))
        expected = -(torch.relu(module.decoder.net[2](code)) - h1).pow(2).sum(-1)  # inner pair: squared error
        assert torch.allclose(trace.nodes["reconstruction"]["fn"].log_factor, expected, atol=1e-5)
        trace.log_prob_sum().neg().backward()
    trained = {name for name, p in module.named_parameters() if p.grad is not None}
    assert trained == {"encoder.trunk.2.weight", "encoder.trunk.2.bias", "decoder.net.2.weight", "decoder.net.2.bias"}
    model = VaDE(**{**TINY_VADE, "hidden_dims": (32, 16), "pretrain": "stacked", "pretrain_layer_epochs": 1,
                    "pretrain_epochs": 1}).fit(small, epochs=1, seed=0, progress=False)
    assert model.history_["phase"] == ["pretrain_layer0", "pretrain_layer1", "pretrain_layer2", "pretrain",
                                       "init", "train"]


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



def test_training_checkpoints_load_as_models(digits, tmp_path):
    from pyro_hc.infer import CheckpointEvery

    small = digits.subset(torch.arange(200))
    model = pyro_hc.get_model("vade", **TINY_VADE).fit(
        small, epochs=2, seed=0, progress=False, callbacks=[CheckpointEvery(tmp_path / "ck.pt")])
    restored = load(tmp_path / "ck.pt")  # written after the last epoch of the main phase
    assert torch.equal(restored.predict(small), model.predict(small))
    assert restored.tree.to_json() == model.tree.to_json()


@pytest.mark.parametrize("name", ["vade", "kdvae"])
def test_constant_data_warn_once_in_our_words_not_scikit_learns(name):
    """k-means / GMM starts on points with fewer distinct rows than clusters: scikit-learn repeats a
    ConvergenceWarning at every restart; the user gets one RuntimeWarning naming the model instead."""
    from sklearn.exceptions import ConvergenceWarning

    x = torch.full((40, 64), 0.5)
    settings = dict(n_clusters=4, epochs=1, latent_dim=2, hidden_dims=(8,))
    settings.update(pretrain_epochs=1) if name == "vade" else settings.update(
        vade_epochs=1, vade_pretrain_epochs=1, vade_hidden_dims=(8,), warmup_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyro_hc.get_model(name, **settings).fit(x, progress=False)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "distinct point" in str(w.message)]
    assert ours and all("n_clusters=4" in str(w.message) for w in ours)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]

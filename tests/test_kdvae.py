"""k-DVAE / k-DAE: both objectives against hand computations, batched networks, Eq. 8, persistence."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from sklearn.cluster import KMeans
from torch import nn

import pyro_hc
from pyro_hc.infer import local_params
from pyro_hc.metrics import cluster_acc, nmi
from pyro_hc.models import KDAE, KDVAE, KDVAEModule, load
from pyro_hc.models.kdvae import OBJECTIVES, ClusterWarmup, KAutoencoderObjective
from pyro_hc.nn import BatchedLinear, BatchedMLP, MemberRows, mlp

from .conftest import torch_threads

# tiny everything: a VaDE init of one epoch, one warm-up and one main epoch on 300 digits
TINY_KDVAE = dict(n_clusters=10, latent_dim=3, hidden_dims=(16,), epochs=1, warmup_epochs=1,
                  vade_epochs=1, vade_pretrain_epochs=1, vade_hidden_dims=(16,))


# hand-written pieces (no Pyro, one cluster at a time) ------------------------------------------


def normal_log_density(value, loc, scale):
    return -0.5 * math.log(2 * math.pi) - torch.log(scale) - (value - loc) ** 2 / (2 * scale**2)


def hand_mlp(layers, i, h, final_relu=False):
    """Cluster ``i``'s network, layer by layer, from the stacked weights."""
    for j, layer in enumerate(layers):
        h = h @ layer.weight[i] + layer.bias[i, 0]
        if j < len(layers) - 1 or final_relu:
            h = torch.relu(h)
    return h


def hand_encoder(module, i, x):
    enc = module.encoders
    hidden = hand_mlp(enc.trunk.layers, i, x, final_relu=True)
    loc = hidden @ enc.loc_head.weight[i] + enc.loc_head.bias[i, 0]
    log_var = hidden @ enc.log_var_head.weight[i] + enc.log_var_head.bias[i, 0]
    return loc, torch.exp(0.5 * log_var)


def hand_bernoulli_log_lik(x, logits):
    prob = torch.sigmoid(logits)
    return (x * torch.log(prob) + (1 - x) * torch.log1p(-prob)).sum(-1)


def hand_cluster_elbo(module, i, x, z):
    """Eq. 6 for cluster ``i``: ``log p_θi(x | z_i) − KL(q(z | x, y = i) ‖ N(0, I))``.

    The KL in closed form (``module.kl == "analytic"``) or by its one-sample estimate
    ``log q(z_i | x, y = i) − log N(z_i; 0, I)``.
    """
    loc, scale = hand_encoder(module, i, x)
    log_px = hand_bernoulli_log_lik(x, hand_mlp(module.decoders.net.layers, i, z))
    if module.kl == "analytic":
        return log_px - (0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)).sum(-1)
    log_pz = normal_log_density(z, torch.zeros_like(z), torch.ones_like(z)).sum(-1)
    log_qz = normal_log_density(z, loc, scale).sum(-1)
    return log_px + log_pz - log_qz


def tiny_module(objective, seed=3, kl="analytic", winners_only=True):
    torch.manual_seed(seed)
    with local_params():
        module = KDVAEModule(n_features=6, n_clusters=3, latent_dim=2, hidden_dims=(5, 4),
                             likelihood="bernoulli", objective=objective, kl=kl, winners_only=winners_only)
    with torch.no_grad():  # non-trivial mixture weights and encoder variances
        module.mixture_logits_unconstrained.copy_(torch.tensor([0.3, -0.5, 0.1]))
        module.encoders.log_var_head.weight.normal_(0.0, 0.3)
        module.encoders.log_var_head.bias.normal_(0.0, 0.3)
    return module


def pyro_loss_and_latents(module, x, index=None, num_data=None, seed=11):
    """Pyro's loss and the z_i the guide drew for every cluster (same RNG state).

    Soft objective: tracing the guide with y enumerated makes its ``z`` site hold the draws of all
    k clusters, ``k x N x d``. Hard objective: the guide's first random draw is every cluster's
    ``z_i`` (densely or, with ``winners_only``, before the winners are picked), which
    ``cluster_elbos`` draws alike from the same RNG state.
    """
    elbo = TraceEnum_ELBO if module.objective == "soft" else Trace_ELBO
    with local_params():
        pyro.set_rng_seed(seed)
        if module.objective == "soft":
            guide = poutine.enum(config_enumerate(module.guide), first_available_dim=-2)
            z = poutine.trace(guide).get_trace(x, index, num_data).nodes["z"]["value"]
        else:
            with torch.no_grad():
                z = module.cluster_elbos(x)[0]
        pyro.set_rng_seed(seed)
        loss = elbo(max_plate_nesting=1).differentiable_loss(module.model, module.guide, x, index, num_data)
    return loss, z


def hand_elbos(module, x, z):
    with local_params():
        return torch.stack([hand_cluster_elbo(module, i, x, z[i]) for i in range(module.n_clusters)])


# the two objectives --------------------------------------------------------------------------


def test_analytic_kl_equals_a_monte_carlo_estimate_and_has_less_noise():
    """Eq. 6's closed-form KL against the average of many one-sample estimates of it."""
    module = tiny_module("hard")
    x = torch.rand(5, 6)
    with local_params(), torch.no_grad():
        loc, scale = module.encoders(x)
        analytic = module.cluster_elbos(x)[3]
        module.kl = "monte_carlo"
        draws = torch.stack([module.cluster_elbos(x)[3] for _ in range(4000)])
        module.kl = "analytic"
        again = torch.stack([module.cluster_elbos(x)[3] for _ in range(200)])
    # the same decoder term in both: their means must agree within the Monte Carlo error
    standard_error = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - again.mean(0)).abs() < 5 * standard_error + 0.02).all()
    assert (again.var(0) < draws.var(0)).all()  # only the reconstruction term is left to vary
    # the closed form itself, read back from the guide's density log N(z; 0, I) + KL
    with local_params(), torch.no_grad():
        z, guide_log_density, _, _ = module.cluster_elbos(x)
    kl = guide_log_density - torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl, reference, atol=1e-5) and analytic.shape == (3, 5)


@pytest.mark.parametrize("kl", ["analytic", "monte_carlo"])
def test_soft_objective_is_logsumexp_over_cluster_elbos(kl):
    module = tiny_module("soft", kl=kl)
    x = torch.rand(7, 6)
    loss, z = pyro_loss_and_latents(module, x)
    assert z.shape == (3, 7, 2)
    log_alpha = torch.log_softmax(torch.tensor([0.3, -0.5, 0.1]), -1)
    expected = -torch.logsumexp(log_alpha[:, None] + hand_elbos(module, x, z), 0).sum()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5), (loss, expected)


def test_soft_objective_scales_minibatch_by_data_size():
    module = tiny_module("soft")
    x = torch.rand(4, 6)
    loss, z = pyro_loss_and_latents(module, x, index=torch.tensor([2, 5, 7, 9]), num_data=40)
    log_alpha = torch.log_softmax(torch.tensor([0.3, -0.5, 0.1]), -1)
    expected = -torch.logsumexp(log_alpha[:, None] + hand_elbos(module, x, z), 0).sum() * 40 / 4
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("winners_only", [True, False])
@pytest.mark.parametrize("kl", ["analytic", "monte_carlo"])
def test_hard_objective_is_max_over_cluster_elbos(kl, winners_only):
    module = tiny_module("hard", kl=kl, winners_only=winners_only)
    x = torch.rand(9, 6)
    loss, z = pyro_loss_and_latents(module, x)
    per_cluster = hand_elbos(module, x, z)
    assert (per_cluster.argmax(0) != per_cluster.argmax(0)[0]).any(), "pick a case where the winner varies"
    expected = -per_cluster.max(0).values.sum()  # Eq. 6 (no log α: the KL to p(y) is neglected)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5), (loss, expected)


@pytest.mark.parametrize("winners_only", [True, False])
def test_hard_objective_trains_only_the_winning_cluster(winners_only):
    module = tiny_module("hard", winners_only=winners_only)
    x = torch.rand(1, 6)
    loss, z = pyro_loss_and_latents(module, x)
    winner = int(hand_elbos(module, x, z).argmax(0))
    loss.backward()
    for name, param in module.named_parameters():
        if name.startswith(("encoders.", "decoders.")):
            others = [i for i in range(3) if i != winner]
            assert param.grad[others].abs().sum() == 0, name  # the losers get nothing
    assert module.decoders.net.layers[-1].bias.grad[winner].abs().sum() > 0
    assert module.encoders.loc_head.bias.grad[winner].abs().sum() > 0
    assert module.mixture_logits_unconstrained.grad is None  # Eq. 6 has no α


def test_soft_objective_gradients_reach_every_parameter():
    module = tiny_module("soft")
    loss, _ = pyro_loss_and_latents(module, torch.rand(5, 6))
    loss.backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("winners_only", [True, False])
def test_kdae_objective_is_best_reconstruction(winners_only):
    module = tiny_module("hard", winners_only=winners_only)
    x = torch.rand(8, 6)
    with local_params():
        loss = Trace_ELBO().differentiable_loss(KAutoencoderObjective(module).model, lambda *a: None, x)
        recon = torch.stack([
            hand_bernoulli_log_lik(x, hand_mlp(module.decoders.net.layers, i, hand_encoder(module, i, x)[0]))
            for i in range(3)
        ])
    assert torch.allclose(loss, -recon.max(0).values.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_model_decodes_itself_when_the_guide_hands_nothing_over(objective):
    """The guide hands its decoder outputs to the model; recomputing them gives the same loss."""
    torch.manual_seed(4)
    with local_params():
        module = KDVAEModule(n_features=6, n_clusters=3, latent_dim=2, hidden_dims=(5,), likelihood="gaussian",
                             objective=objective)
    x = torch.randn(7, 6)

    def guide_without_handoff(*args):
        module.guide(*args)
        module._handoff = None

    elbo = (TraceEnum_ELBO if objective == "soft" else Trace_ELBO)(max_plate_nesting=1)
    with local_params():
        pyro.set_rng_seed(0)
        handed = elbo.differentiable_loss(module.model, module.guide, x)
        pyro.set_rng_seed(0)
        recomputed = elbo.differentiable_loss(module.model, guide_without_handoff, x)
    assert torch.allclose(handed, recomputed, rtol=1e-6)


def test_model_runs_from_the_prior():
    """Without a guide y is drawn per datum and z is shared by every decoder, then picked by y."""
    module = tiny_module("soft")
    x = torch.rand(5, 6)
    with local_params():
        pyro.set_rng_seed(0)
        trace = poutine.trace(module.model).get_trace(x)
        y, z = trace.nodes["y"]["value"], trace.nodes["z"]["value"]
        assert y.shape == (5,) and z.shape == (5, 2)
        logits = torch.stack([hand_mlp(module.decoders.net.layers, int(y[n]), z[n]) for n in range(5)])
        log_px = trace.nodes["x"]["fn"].log_prob(x)
    assert torch.allclose(log_px, hand_bernoulli_log_lik(x, logits), atol=1e-5)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("kl", ["analytic", "monte_carlo"])
def test_winners_only_gives_the_dense_loss_and_gradients(kl, likelihood):
    """The packed winners-only pass is the dense objective, for Eq. 6, k-DAE and both warm-ups."""
    torch.manual_seed(5)
    with local_params():
        module = KDVAEModule(n_features=12, n_clusters=4, latent_dim=3, hidden_dims=(9, 7), likelihood=likelihood,
                             kl=kl)
    x = torch.rand(23, 12)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 1, 1, 1, 3, 3, 1, 0, 0, 0, 3, 3])  # no cluster 2
    objectives = {"eq6": module, "kdae": KAutoencoderObjective(module),
                  "warmup": ClusterWarmup(module, labels), "kdae_warmup": ClusterWarmup(module, labels, False)}
    for name, objective in objectives.items():
        results = []
        for winners_only in (True, False):
            module.winners_only = winners_only
            module.zero_grad()
            with local_params():
                pyro.set_rng_seed(7)
                loss = Trace_ELBO().differentiable_loss(objective.model, objective.guide, x)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]))
        (packed, packed_grads), (dense, dense_grads) = results
        assert torch.allclose(packed, dense, rtol=1e-6), (name, packed, dense)
        assert len(packed_grads) == len(dense_grads) > 0, name
        for a, b in zip(packed_grads, dense_grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), name
    module.winners_only = True
    assert not module.cuda_graph_safe and not objectives["kdae"].cuda_graph_safe


def test_member_rows_pack_and_unpack():
    member = torch.tensor([2, 0, 2, 2, 1, 0])
    rows = MemberRows(member, 4)
    data = torch.arange(12.0).reshape(6, 2)
    packed = rows.pack(data)
    assert packed.shape == (4, 3, 2) and rows.width == 3
    assert torch.equal(packed[2], data[[0, 2, 3]]) and torch.equal(packed[0, :2], data[[1, 5]])
    assert torch.equal(packed[3], torch.zeros(3, 2)) and torch.equal(packed[0, 2], torch.zeros(2))
    assert torch.equal(rows.unpack(packed), data)
    with pytest.raises(ValueError, match="must lie in"):
        MemberRows(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="must lie in"):
        MemberRows(torch.tensor([0, -1]), 4)
    with pytest.raises(ValueError, match="expects 6 rows"):
        rows.pack(data[:5])


def test_estimator_asks_for_dense_networks_only_under_cuda_graphs():
    model = KDVAE(**TINY_KDVAE)
    model.data_spec_ = pyro_hc.estimator.DataSpec(64, None, "bernoulli")
    assert model._build_module().winners_only
    model._cuda_graphs = True
    assert not model._build_module().winners_only


# batched networks ------------------------------------------------------------------------------


def test_batched_linear_equals_separate_linears():
    torch.manual_seed(0)
    linears = [nn.Linear(5, 3) for _ in range(4)]
    batched = BatchedLinear.from_linears(linears)
    shared, own = torch.randn(6, 5), torch.randn(4, 6, 5)
    with torch.no_grad():
        assert torch.allclose(batched(shared), torch.stack([lin(shared) for lin in linears]), atol=1e-6)
        assert torch.allclose(batched(own), torch.stack([lin(own[m]) for m, lin in enumerate(linears)]), atol=1e-6)
        for m, lin in enumerate(linears):
            copy = batched.member(m)
            assert torch.equal(copy.weight, lin.weight) and torch.equal(copy.bias, lin.bias)
    with pytest.raises(ValueError, match="one input per member"):
        batched(torch.randn(3, 6, 5))


def test_batched_mlp_equals_k_separate_stacks():
    torch.manual_seed(1)
    stacks = [mlp([5, 7, 4, 2]) for _ in range(3)]
    batched = BatchedMLP.from_mlps(stacks)
    shared, own = torch.randn(8, 5), torch.randn(3, 8, 5)
    with torch.no_grad():
        assert torch.allclose(batched(shared), torch.stack([s(shared) for s in stacks]), atol=1e-6)
        assert torch.allclose(batched(own), torch.stack([s(own[m]) for m, s in enumerate(stacks)]), atol=1e-6)


def test_module_networks_equal_k_separate_linear_stacks():
    """Copy each cluster's weights out into plain nn.Linear stacks and run them one by one."""
    torch.manual_seed(2)
    with local_params():
        module = KDVAEModule(n_features=9, n_clusters=4, latent_dim=3, hidden_dims=(8, 6), likelihood="gaussian")
    with torch.no_grad():
        module.encoders.log_var_head.weight.normal_()
    enc, dec = module.encoders, module.decoders

    def stack(layers, i, final_relu):
        mods = []
        for j, layer in enumerate(layers):
            mods.append(layer.member(i))
            if j < len(layers) - 1 or final_relu:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    x, z = torch.randn(5, 9), torch.randn(4, 5, 3)
    with torch.no_grad(), local_params():
        loc, scale = enc(x)
        out = dec(z)
        for i in range(4):
            trunk = stack(enc.trunk.layers, i, final_relu=True)
            hidden = trunk(x)
            assert torch.allclose(loc[i], enc.loc_head.member(i)(hidden), atol=1e-6)
            assert torch.allclose(scale[i], torch.exp(0.5 * enc.log_var_head.member(i)(hidden)), atol=1e-6)
            assert torch.allclose(out[i], stack(dec.net.layers, i, final_relu=False)(z[i]), atol=1e-6)
        # a z shared by every decoder
        shared = dec(z[0])
        for i in range(4):
            assert torch.allclose(shared[i], stack(dec.net.layers, i, final_relu=False)(z[0]), atol=1e-6)


# fitted models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks gain nothing from threads, and spare threads stall on a shared machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def small_digits(digits):
    return digits.subset(torch.arange(300))


@pytest.fixture(scope="module")
def tiny_kdvae(small_digits):
    return pyro_hc.get_model("kdvae", **TINY_KDVAE).fit(small_digits, seed=0, progress=False)


def test_registry_and_history(tiny_kdvae):
    assert isinstance(pyro_hc.get_model("kdvae"), KDVAE) and isinstance(pyro_hc.get_model("KDAE"), KDAE)
    assert tiny_kdvae.history_["phase"] == ["vade_pretrain", "vade_init", "vade_train", "init", "warmup", "train"]
    assert np.isfinite(tiny_kdvae.history_["loss"]).all()
    assert tiny_kdvae.init_labels_.shape == (300,)


def test_eq8_hard_assignment_is_deterministic(tiny_kdvae, small_digits):
    first = tiny_kdvae.predict(small_digits)
    assert torch.equal(first, tiny_kdvae.predict(small_digits))
    module = tiny_kdvae.module_
    x = small_digits.flat()
    with torch.no_grad(), local_params():
        scores = []
        for i in range(10):  # Eq. 8 written out per cluster
            loc, scale = hand_encoder(module, i, x)
            log_lik = hand_bernoulli_log_lik(x, hand_mlp(module.decoders.net.layers, i, loc))
            scores.append(log_lik - 0.5 * loc.pow(2).sum(-1) + torch.log(scale).sum(-1))
        scores = torch.stack(scores, -1)
    assert torch.allclose(tiny_kdvae.cluster_scores(small_digits), scores, atol=1e-4)
    # α stays uniform under the hard objective, so predict is exactly Eq. 8's argmax
    leaves = torch.as_tensor(tiny_kdvae.tree.leaves())
    assert torch.equal(first, leaves[scores.argmax(-1)])


def test_predict_proba_transform_and_density(tiny_kdvae, small_digits):
    proba = tiny_kdvae.predict_proba(small_digits)
    assert proba.shape == (300, 10)
    assert torch.allclose(proba.sum(-1), torch.ones(300), atol=1e-5)
    assert torch.equal(tiny_kdvae.predict(small_digits), torch.as_tensor(tiny_kdvae.tree.leaves())[proba.argmax(-1)])
    assert tiny_kdvae.transform(small_digits).shape == (300, 3)
    assert np.isfinite(tiny_kdvae.reconstruction_error(small_digits))
    assert np.isfinite(tiny_kdvae.negative_log_likelihood(small_digits.subset(torch.arange(20)), num_samples=4))


def test_sample_decodes_prior_draws_through_one_decoder(tiny_kdvae):
    leaf = tiny_kdvae.tree.leaves()[2]
    images = tiny_kdvae.sample(cluster=leaf, n=5, seed=7)
    assert images.shape == (5, 1, 8, 8) and ((images >= 0) & (images <= 1)).all()
    assert torch.equal(images, tiny_kdvae.sample(cluster=leaf, n=5, seed=7))
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), local_params():
        expected = torch.sigmoid(hand_mlp(tiny_kdvae.module_.decoders.net.layers, 2, z))
    assert torch.allclose(images.reshape(5, -1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="leaf"):
        tiny_kdvae.sample(cluster=tiny_kdvae.tree.root, n=2)


def test_save_load_round_trip_gives_identical_predictions(tiny_kdvae, small_digits, tmp_path):
    restored = load(tiny_kdvae.save(tmp_path / "kdvae.pt"))
    assert isinstance(restored, KDVAE) and restored.get_params() == tiny_kdvae.get_params()
    assert torch.equal(restored.predict(small_digits), tiny_kdvae.predict(small_digits))
    assert torch.equal(restored.predict_proba(small_digits), tiny_kdvae.predict_proba(small_digits))
    assert torch.equal(restored.sample(cluster=1, n=3, seed=0), tiny_kdvae.sample(cluster=1, n=3, seed=0))
    assert restored.history_.records == tiny_kdvae.history_.records


@pytest.mark.parametrize("name,objective", [("kdvae", "soft"), ("kdae", "hard")])
def test_other_variants_fit_and_round_trip(name, objective, small_digits, tmp_path):
    config = {**TINY_KDVAE, "objective": objective, "vade_epochs": 0, "vade_pretrain_epochs": 0}
    model = pyro_hc.get_model(name, **config).fit(small_digits, seed=0, progress=False)
    assert model.history_["phase"] == ["init", "warmup", "train"] and model.vade_ is None
    assert np.isfinite(model.history_["loss"]).all()
    restored = load(model.save(tmp_path / f"{name}.pt"))
    assert type(restored) is type(model)
    assert torch.equal(restored.predict_proba(small_digits), model.predict_proba(small_digits))
    if name == "kdae":  # plain autoencoders: the reconstruction picks the cluster
        leaves = torch.as_tensor(model.tree.leaves())
        log_alpha = model.module_.log_weights.detach()
        assert torch.equal(model.predict(small_digits),
                           leaves[(model.cluster_scores(small_digits) + log_alpha).argmax(-1)])
    else:  # the soft objective learns α (Eq. 1's KL(q(y|x) ‖ p(y)))
        assert not torch.allclose(model.module_.mixture_logits_unconstrained, torch.zeros(10))


def test_init_from_reuses_a_vade_exactly_and_records_the_start(small_digits, tmp_path):
    vade = pyro_hc.get_model("vade", n_clusters=10, latent_dim=3, hidden_dims=(16,), pretrain_epochs=1)
    vade.fit(small_digits, epochs=1, seed=2, progress=False)
    state = {k: v.clone() for k, v in vade.module_.state_dict().items()}
    path = vade.save(tmp_path / "vade.pt")
    config = {**TINY_KDVAE, "vade_epochs": 5, "vade_pretrain_epochs": 5}  # ignored: the VaDE is given
    from_object = KDVAE(**config, init_from=vade).fit(small_digits, seed=0, progress=False,
                                                      monitor_labels=small_digits.y)
    from_file = KDAE(**config, init_from=path).fit(small_digits, seed=0, progress=False)
    assert from_object.vade_ is vade  # used, not copied or retrained
    for key, value in vade.module_.state_dict().items():
        assert torch.equal(value, state[key]), key
        assert torch.equal(from_file.vade_.module_.state_dict()[key], state[key]), key
    # the initial clusters are k-means in exactly that VaDE's embedding
    expected = KMeans(10, n_init=10, random_state=0).fit(vade.transform(small_digits).double().numpy()).labels_
    assert np.array_equal(from_object.init_labels_.numpy(), expected)
    assert np.array_equal(from_file.init_labels_.numpy(), expected)
    phases = ["vade_pretrain", "vade_init", "vade_train", "init", "warmup", "train"]
    assert from_object.history_["phase"] == from_file.history_["phase"] == phases  # the VaDE's own epochs only
    init = from_object.history_.records[3]
    labels = small_digits.y.numpy()
    assert init["acc"] == pytest.approx(cluster_acc(labels, expected))
    assert init["nmi"] == pytest.approx(nmi(labels, expected))
    assert init["vade_acc"] == pytest.approx(cluster_acc(labels, vade.predict(small_digits).numpy()))
    assert init["init_from"] == "VaDE object" and from_file.history_.records[3]["init_from"] == str(path)
    assert "acc" not in from_file.history_.records[3]  # no labels given
    assert "acc" in from_object.history_.records[-1]  # the main phase's last epoch is scored
    # a saved k-DVAE keeps a path, not a VaDE object
    assert load(from_object.save(tmp_path / "k.pt")).init_from is None
    assert load(from_file.save(tmp_path / "kf.pt")).init_from == str(path)
    with pytest.raises(pyro_hc.estimator.NotFittedError, match="init_from"):
        KDVAE(**config, init_from=pyro_hc.get_model("vade")).fit(small_digits, progress=False)
    with pytest.raises(ValueError, match="not a file"):
        KDVAE(**config, init_from=tmp_path / "missing.pt").fit(small_digits, progress=False)
    with pytest.raises(ValueError, match="not a VaDE"):
        KDVAE(**config, init_from=tmp_path / "kf.pt").fit(small_digits, progress=False)
    with pytest.raises(ValueError, match="features"):
        KDVAE(**config, init_from=vade).fit(torch.rand(50, 10), progress=False)


def test_bad_config_is_rejected(small_digits):
    with pytest.raises(ValueError, match="objective"):
        pyro_hc.get_model("kdvae", objective="fuzzy").fit(small_digits, epochs=0, progress=False)
    with pytest.raises(ValueError, match="n_clusters"):
        pyro_hc.get_model("kdvae", n_clusters=0).fit(small_digits, epochs=0, progress=False)
    with pytest.raises(ValueError, match="n_clusters"):
        pyro_hc.get_model("kdae", n_clusters=5000).fit(small_digits, epochs=0, progress=False)
    with pytest.raises(ValueError, match="warmup_epochs"):
        pyro_hc.get_model("kdvae", warmup_epochs=-1).fit(small_digits, epochs=0, progress=False)
    with pytest.raises(ValueError, match="objective"):
        KDVAEModule(6, 3, objective="max")
    with pytest.raises(ValueError, match="n_clusters"):
        KDVAEModule(6, 0)
    with pytest.raises(ValueError, match="hard objective only"):
        pyro_hc.get_model("kdae", objective="soft").fit(small_digits, epochs=0, progress=False)
    assert pyro_hc.get_model("kdvae", objective="fuzzy").objective == "fuzzy"  # the constructor only stores

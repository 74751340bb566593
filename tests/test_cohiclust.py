"""CoHiClust: path probabilities, CoHiLoss, R1, R2 and pruning against hand computations; digits vs k-means."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO
from sklearn.cluster import KMeans

import pyro_hc
import pyro_hc.models.cohiclust  # noqa: F401  (registers "cohiclust" before the lead adds the import)
from pyro_hc.estimator import NotFittedError
from pyro_hc.heuristics.cohiclust import LeafPruning, prune_leaf
from pyro_hc.hierarchy import class_distance_matrix, hierarchy_distance, node_distance_matrix
from pyro_hc.infer import FitState, local_params
from pyro_hc.metrics import cluster_acc, nmi
from pyro_hc.models.cohiclust import (
    R1_FORMS, CoHiClust, CoHiClustModule, SimCLRPretraining, balance_loss, cohi_loss, complete_binary_tree,
    MIN_STEPS_PER_EPOCH, auto_batch_size, heap_ancestors, level_probs, node_log_probs, nt_xent, routing_masks,
    simclr_crop_scale,
)
from pyro_hc.nn import BatchAugment, make_backbone

sigmoid = torch.sigmoid


def tiny_module(depth=2, augment="none", seed=0):
    torch.manual_seed(seed)
    with local_params():
        return CoHiClustModule((1, 8, 8), depth=depth, backbone="small_cnn", augment=augment).double()


def hand_levels(logits):
    """P_1 and P_2 of a depth-2 tree, written out edge by edge (Sec. 3, "Tree hierarchy")."""
    p0, p1, p2 = sigmoid(logits[:, 0]), sigmoid(logits[:, 1]), sigmoid(logits[:, 2])
    level1 = torch.stack([p0, 1 - p0], -1)
    level2 = torch.stack([p0 * p1, p0 * (1 - p1), (1 - p0) * p2, (1 - p0) * (1 - p2)], -1)
    return level1, level2


# the tree's probabilities ------------------------------------------------------------------------


def test_path_probabilities_match_hand_computation_for_depth_two():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.7, 0.4, -0.1], [4.0, -3.0, 0.0]], dtype=torch.float64)
    log_p = node_log_probs(logits, heap_ancestors(2))
    level1, level2 = hand_levels(logits)
    assert torch.allclose(level_probs(log_p, 1), level1, atol=1e-12)
    assert torch.allclose(level_probs(log_p, 2), level2, atol=1e-12)
    assert torch.allclose(level_probs(log_p, 2).sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(log_p[:, 0], torch.zeros(3, dtype=torch.float64))  # the root


def test_every_level_is_a_distribution():
    torch.manual_seed(0)
    logits = 3 * torch.randn(5, 2**5 - 1, dtype=torch.float64)
    log_p = node_log_probs(logits, heap_ancestors(5))
    for t in range(6):
        assert torch.allclose(level_probs(log_p, t).sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12), t
    # a node's mass is its children's: P(h) = P(2h+1) + P(2h+2)
    p = log_p.exp()
    heap = torch.arange(31)
    assert torch.allclose(p[:, heap], p[:, 2 * heap + 1] + p[:, 2 * heap + 2], atol=1e-12)


def test_heap_ancestors_list_the_path_below_the_root():
    table = heap_ancestors(3)
    assert table.shape == (15, 3)
    assert table[0].tolist() == [0, 0, 0]
    assert table[2].tolist() == [2, 0, 0]
    assert table[4].tolist() == [1, 4, 0]
    assert table[10].tolist() == [1, 4, 10]  # 0 -> 1 -> 4 -> 10


def test_complete_tree_uses_heap_ids():
    tree = complete_binary_tree(3)
    assert len(tree) == 15 and tree.leaves() == list(range(7, 15))
    assert all(tree.children(h) == [2 * h + 1, 2 * h + 2] for h in range(7))


# the loss terms ------------------------------------------------------------------------------------


def hand_similarity(pa, pb):
    """s(x1, x2) = Σ_t Σ_i sqrt(P_t^i(x1) P_t^i(x2)) over the levels t = 1, 2 (Eq. 1 summed)."""
    return sum(math.sqrt(float(a) * float(b)) for level_a, level_b in zip(pa, pb) for a, b in zip(level_a, level_b))


def test_cohi_loss_matches_hand_computation():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.7, 0.4, -0.1], [1.5, -0.3, 0.8]], dtype=torch.float64)
    logits_tilde = torch.tensor([[0.5, -1.0, 1.0], [-1.1, 0.9, 0.2], [1.0, 0.6, -0.4]], dtype=torch.float64)
    ancestors = heap_ancestors(2)
    loss = cohi_loss(node_log_probs(logits, ancestors), node_log_probs(logits_tilde, ancestors))
    levels, levels_tilde = hand_levels(logits), hand_levels(logits_tilde)
    per_point = [[level[j] for level in levels] for j in range(3)]
    per_point_tilde = [[level[j] for level in levels_tilde] for j in range(3)]
    n = 3
    positive = sum(hand_similarity(per_point[j], per_point_tilde[j]) for j in range(n)) / n
    negative = sum(hand_similarity(per_point[j], per_point_tilde[i]) for j in range(n) for i in range(n) if i != j)
    expected = negative / (n * (n - 1)) - positive
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_cohi_loss_is_lowest_when_views_agree_and_data_disagree():
    sure = torch.tensor([[40.0, 40.0, 0.0], [-40.0, 0.0, -40.0]], dtype=torch.float64)  # leaves 3 and 6
    ancestors = heap_ancestors(2)
    agree = cohi_loss(node_log_probs(sure, ancestors), node_log_probs(sure, ancestors))
    assert agree.item() == pytest.approx(-2.0, abs=1e-6)  # s = 2 for a positive pair, 0 for the negative
    swapped = cohi_loss(node_log_probs(sure, ancestors), node_log_probs(sure.flip(0), ancestors))
    assert swapped.item() == pytest.approx(2.0, abs=1e-6)


def official_regularization(logits: torch.Tensor, depth: int) -> float:
    """R1 as the official ``tree_losses.regularization_loss`` computes it, level by level, with loops."""
    p = sigmoid(logits)
    total = 0.0
    for level in range(1, depth + 1):
        for i in range(2**level // 2):  # the sibling pairs (2i, 2i + 1) of this level
            means = []
            for leaf_of_level in (2 * i, 2 * i + 1):
                reach = torch.ones(logits.shape[0], dtype=torch.float64)
                node = 2**level - 1 + leaf_of_level  # heap id
                while node > 0:  # walk up: a left child multiplies by σ, a right one by 1 − σ
                    parent = (node - 1) // 2
                    reach = reach * (p[:, parent] if node == 2 * parent + 1 else 1 - p[:, parent])
                    node = parent
                means.append(float(reach.mean()))
            total += -(1 / 2**level) * (0.5 * math.log(means[0]) + 0.5 * math.log(means[1]))
    return total


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_decayed_balance_loss_matches_the_official_code_by_hand(depth):
    torch.manual_seed(depth)
    logits = 2 * torch.randn(7, 2**depth - 1, dtype=torch.float64)
    log_p = node_log_probs(logits, heap_ancestors(depth))
    assert balance_loss(log_p).item() == pytest.approx(official_regularization(logits, depth), rel=1e-12)
    # per level: the nodes of one depth d carry weight 2^-(d+1)
    for d in range(depth):
        nodes = torch.arange(2**d - 1, 2 ** (d + 1) - 1)
        only = balance_loss(log_p, nodes).item()
        below = official_regularization(logits, d + 1) - (official_regularization(logits, d) if d else 0.0)
        assert only == pytest.approx(below, rel=1e-12), d


def test_depth_decay_weakens_the_pull_on_the_parents_of_leaves():
    """The uniform form's gradient on the last decisions is 2^T times the official one's (relative to the root)."""
    torch.manual_seed(0)
    depth = 3
    logits = torch.randn(64, 2**depth - 1, dtype=torch.float64, requires_grad=True)
    ratios = {}
    for form in R1_FORMS:
        (grad,) = torch.autograd.grad(balance_loss(node_log_probs(logits, heap_ancestors(depth)), form=form), logits)
        deepest = grad[:, 2 ** (depth - 1) - 1:].abs().sum() / grad[:, 0].abs().sum()
        ratios[form] = float(deepest)
    assert ratios["uniform"] > 2 * ratios["depth_decayed"]


def test_balance_loss_matches_frosst_hinton_by_hand():
    logits = torch.tensor([[0.3, -1.2, 2.0], [-0.7, 0.4, -0.1], [1.5, -0.3, 0.8], [0.0, 2.0, -2.0]],
                          dtype=torch.float64)
    r1 = balance_loss(node_log_probs(logits, heap_ancestors(2)), form="uniform")
    p = sigmoid(logits)
    reach = [torch.ones(4, dtype=torch.float64), p[:, 0], 1 - p[:, 0]]  # P_h(x) of the internal nodes 0, 1, 2
    expected = 0.0
    for h in range(3):
        alpha = float((reach[h] * p[:, h]).sum() / reach[h].sum())  # Frosst & Hinton's α_h
        expected += -0.5 * math.log(alpha) - 0.5 * math.log(1 - alpha)
    assert r1.item() == pytest.approx(expected, abs=1e-12)
    assert r1.item() >= 3 * math.log(2) - 1e-12  # each node's cross-entropy is at least log 2
    # only the nodes named count
    only_root = balance_loss(node_log_probs(logits, heap_ancestors(2)), torch.tensor([0]), form="uniform")
    alpha = float(p[:, 0].mean())
    assert only_root.item() == pytest.approx(-0.5 * math.log(alpha) - 0.5 * math.log(1 - alpha), abs=1e-12)


def test_nt_xent_matches_hand_computation():
    torch.manual_seed(1)
    z, z_tilde = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    views = torch.nn.functional.normalize(torch.cat([z, z_tilde]), dim=1)
    tau, total = 0.5, 0.0
    for a in range(6):
        twin = (a + 3) % 6
        scores = [float(views[a] @ views[b]) / tau for b in range(6) if b != a]
        total += -(float(views[a] @ views[twin]) / tau - math.log(sum(math.exp(s) for s in scores)))
    assert nt_xent(z, z_tilde, tau).item() == pytest.approx(total / 6, rel=1e-6)


def test_model_adds_eq2_through_pyro_factor_scaled_to_the_data():
    module = tiny_module()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    index, num_data = torch.arange(6), 60
    with local_params():
        loss = Trace_ELBO().differentiable_loss(module.model, module.guide, x, index, num_data)
        terms = module.losses(x)  # augment="none": the same views, so the same numbers
    expected = terms["cohi"] + 2.0**-2 * terms["r1"] + 1.0 * terms["r2"]
    assert torch.allclose(terms["loss"], expected)
    assert torch.allclose(loss, num_data * expected, rtol=1e-10)
    loss.backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert module.tree_head.weight.grad.abs().sum() > 0


def test_pretraining_trains_backbone_and_phi_only():
    module = tiny_module()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    with local_params():
        loss = Trace_ELBO().differentiable_loss(SimCLRPretraining(module).model, lambda *a: None, x)
        z = module.embed(x)
    assert torch.allclose(loss, nt_xent(z, z, module.temperature) * 5, rtol=1e-10)
    loss.backward()
    assert module.tree_head.weight.grad is None
    assert module.backbone.net[0].weight.grad.abs().sum() > 0


# pruning -------------------------------------------------------------------------------------------


def run_epoch(callback, module, masses, epoch=0):
    """Feed ``masses`` (one node_mass per step) to the callback and end the epoch."""
    state = FitState(engine=SimpleNamespace(module=module), epoch=epoch, num_data=100)
    callback.on_epoch_start(state)
    for mass in masses:
        module.node_mass = mass
        callback.on_step_end(state)
    callback.on_epoch_end(state)
    return state


def test_pruning_removes_the_emptiest_leaf_and_gives_its_mass_to_the_sibling():
    module = tiny_module(depth=3)
    torch.manual_seed(2)
    logits = torch.randn(7, 7, dtype=torch.float64)
    before = module.node_log_probs(logits).exp()
    mass = before.sum(0)
    emptiest = 7 + int(mass[7:].argmin())
    callback = LeafPruning(n_leaves=5, start_epoch=0)
    state = run_epoch(callback, module, [before[:3].sum(0), before[3:].sum(0)])
    tree = module.tree
    assert emptiest not in tree and state.logs["pruned"] == 1.0
    parent, sibling = (emptiest - 1) // 2, emptiest + 1 if emptiest % 2 else emptiest - 1
    assert parent not in tree and tree.parent(sibling) == (parent - 1) // 2  # the sibling took its place
    tree.check()
    assert all(len(tree.children(v)) == 2 for v in tree.internal_nodes())  # still a full binary tree
    (event,) = tree.events
    assert event["kind"] == "prune" and event["leaf"] == emptiest and event["sibling"] == sibling
    assert event["share"] == pytest.approx(float(mass[emptiest] / mass[7:].sum()))
    after = module.node_log_probs(logits).exp()
    leaves = tree.leaves()
    assert torch.allclose(after[:, leaves].sum(-1), torch.ones(7, dtype=torch.float64))
    assert torch.allclose(after[:, sibling], before[:, sibling] + before[:, emptiest])
    others = [leaf for leaf in leaves if leaf != sibling]
    assert torch.allclose(after[:, others], before[:, others])
    assert torch.all(after[:, emptiest] == 0)


def test_pruning_keeps_one_leaf_per_epoch_until_the_target():
    module = tiny_module(depth=3)
    torch.manual_seed(3)
    callback = LeafPruning(n_leaves=3, start_epoch=2, every=2)
    counts = []
    for epoch in range(14):
        log_p = module.node_log_probs(torch.randn(16, 7, dtype=torch.float64))
        run_epoch(callback, module, [log_p.exp().sum(0)], epoch=epoch)
        tree = module.tree
        tree.check()
        assert all(len(tree.children(v)) == 2 for v in tree.internal_nodes())
        assert set(tree.internal_nodes()) == set(routing_masks(tree, 3)[0].nonzero().flatten().tolist())
        counts.append(len(tree.leaves()))
    assert counts == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 3, 3]
    assert [e["epoch"] for e in module.tree.events] == [2, 4, 6, 8, 10]
    probs = module.node_log_probs(torch.randn(4, 7, dtype=torch.float64)).exp()
    assert torch.allclose(probs[:, module.tree.leaves()].sum(-1), torch.ones(4, dtype=torch.float64))


def test_pruning_below_the_root_moves_the_root():
    tree = complete_binary_tree(1)
    parent, sibling = prune_leaf(tree, 1)
    assert (parent, sibling) == (0, 2) and tree.root == 2 and tree.leaves() == [2]
    free, _ = routing_masks(tree, 1)
    assert not free.any()
    with pytest.raises(ValueError, match="last leaf"):
        prune_leaf(tree, 2)


def test_routing_refuses_a_tree_that_is_not_a_pruned_heap():
    tree = complete_binary_tree(2)
    tree.remove_leaf(3, prune_empty_parents=False)  # node 1 keeps one child: not a full binary tree
    with pytest.raises(ValueError, match="internal nodes"):
        routing_masks(tree, 2)


# hierarchy distances --------------------------------------------------------------------------------


def test_hierarchy_distance_counts_edges_between_leaves():
    tree = complete_binary_tree(3)
    assert hierarchy_distance(tree, 7, 7) == 0
    assert hierarchy_distance(tree, 7, 8) == 2
    assert hierarchy_distance(tree, 7, 9) == 4
    assert hierarchy_distance(tree, 7, 14) == 6
    assert hierarchy_distance(tree, 1, 14) == 4  # internal nodes too
    a = np.array([7, 8, 9, 14, 7])
    b = torch.tensor([8, 8, 14, 7, 12])
    assert hierarchy_distance(tree, a, b).tolist() == [2, 0, 6, 6, 6]
    prune_leaf(tree, 8)  # 7 takes node 3's place
    assert hierarchy_distance(tree, 7, 9) == 3
    assert node_distance_matrix(tree).shape == (7, 7)


def test_class_distance_matrix_by_hand():
    tree = complete_binary_tree(2)  # leaves 3, 4 | 5, 6
    leaves = np.array([3, 3, 4, 5, 6, 6])
    labels = np.array([0, 0, 0, 1, 1, 2])
    matrix = class_distance_matrix(tree, leaves, labels)
    d = lambda u, v: hierarchy_distance(tree, u, v)  # noqa: E731
    # class 0 = {3, 3, 4}: ordered pairs of distinct points: (3,3) x2, (3,4) x4 -> (0 + 0 + 2*4) / 6
    assert matrix[0, 0] == pytest.approx(8 / 6)
    assert matrix[1, 1] == pytest.approx(d(5, 6))
    assert np.isnan(matrix[2, 2])  # a single point has no pair
    assert matrix[0, 1] == pytest.approx(np.mean([d(u, v) for u in (3, 3, 4) for v in (5, 6)]))
    assert matrix[1, 2] == pytest.approx(np.mean([d(5, 6), d(6, 6)]))
    assert np.allclose(matrix, matrix.T, equal_nan=True)


# networks and augmentations -------------------------------------------------------------------------


def test_resnet_backbone_has_a_small_image_stem():
    net, features = make_backbone("resnet18", (1, 28, 28))
    assert features == 512
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, torch.nn.Identity)
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 512)


def test_resnet_imagenet_stem_keeps_the_7x7_stride_2_convolution_and_max_pool():
    net, features = make_backbone("resnet18", (1, 28, 28), stem="imagenet")
    assert features == 512
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, torch.nn.MaxPool2d)
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 512)
    with pytest.raises(ValueError, match="stem"):
        make_backbone("resnet18", (1, 28, 28), stem="tiny")


@pytest.mark.parametrize("kind,shape", [("digits", (1, 8, 8)), ("simclr", (3, 12, 12)), ("simclr", (1, 8, 8)),
                                        ("affine", (1, 8, 8))])
def test_augmentations_draw_parameters_per_image(kind, shape):
    torch.manual_seed(0)
    augment = BatchAugment(kind, crop_scale=(0.3, 1.0))
    image = torch.rand(1, *shape)
    views = augment(image.expand(16, *shape))
    assert views.shape == (16, *shape) and views.min() >= 0 and views.max() <= 1
    distinct = {tuple(v.flatten().round(decimals=4).tolist()) for v in views}
    assert len(distinct) == 16  # same image in, 16 different views out
    assert torch.equal(BatchAugment("none")(image), image)


# the estimator ---------------------------------------------------------------------------------------


def test_configuration_errors():
    data = pyro_hc.load_dataset("digits").subset(slice(0, 20))
    with pytest.raises(ValueError, match="n_leaves"):
        CoHiClust(depth=2, n_leaves=5, backbone="small_cnn").fit(data, epochs=0, progress=False)
    with pytest.raises(ValueError, match="images"):
        CoHiClust(backbone="small_cnn").fit(data.flat(), epochs=0, progress=False)
    with pytest.raises(NotFittedError):
        CoHiClust().predict(data)


def test_default_batch_is_the_official_256_on_large_data_and_halved_until_an_epoch_has_ten_steps():
    assert MIN_STEPS_PER_EPOCH == 10
    assert [auto_batch_size(n) for n in (70_000, 9_298, 2_560, 2_559, 1_797, 640, 300, 20)] == \
        [256, 256, 256, 128, 128, 64, 32, 32]
    assert 1_797 // auto_batch_size(1_797) >= MIN_STEPS_PER_EPOCH  # the digits: 14 steps, 7 at 256


def test_a_fit_drops_the_short_last_batch_and_resolves_the_default_batch_from_the_data():
    """The official loader's drop_last=True; the default batch (None) from the data's size, recorded."""
    data = pyro_hc.load_dataset("digits").subset(slice(0, 100))
    steps = []

    class Steps(pyro_hc.infer.Callback):
        def on_step_end(self, state):
            steps.append(len(state.batch_index))

    model = CoHiClust(depth=2, backbone="small_cnn", pretrain_epochs=1, epochs=1, prune_start=0)
    assert model.get_params()["batch_size"] is None
    model.fit(data, seed=0, progress=False, callbacks=[Steps()])
    assert model.fit_info_["batch_size"] == 32 == auto_batch_size(100)
    assert steps == [32, 32, 32]  # the tree phase: 100 = 3 x 32 + 4, the 4 dropped
    steps.clear()
    model.fit(data, seed=0, batch_size=48, progress=False, callbacks=[Steps()])  # as given
    assert steps == [48, 48] and model.fit_info_["batch_size"] == 48


def test_simclr_crop_keeps_the_official_range_on_mnist_sized_images_and_a_few_pixels_on_tiny_ones():
    assert simclr_crop_scale((1, 28, 28)) == (0.08, 1.0) and simclr_crop_scale((3, 32, 32)) == (0.08, 1.0)
    low, high = simclr_crop_scale((1, 8, 8))
    assert high == 1.0 and low == pytest.approx((6.7 / 8) ** 2) and math.sqrt(low) * 8 == pytest.approx(6.7)
    assert simclr_crop_scale((1, 4, 4)) == (1.0, 1.0)
    data = pyro_hc.load_dataset("digits").subset(slice(0, 20))
    model = CoHiClust(depth=2, n_leaves=3, backbone="small_cnn", pretrain_epochs=0, epochs=0).fit(data, progress=False)
    assert model.module_.augment.kind == "simclr" and model.module_.augment.crop_scale == simclr_crop_scale((1, 8, 8))


def test_a_pretrained_backbone_is_reused(tmp_path):
    data = pyro_hc.load_dataset("digits").subset(slice(0, 64))
    config = dict(depth=2, n_leaves=3, backbone="small_cnn", batch_size=32)
    pretrained = CoHiClust(**config, pretrain_epochs=1, epochs=0).fit(data, seed=0, progress=False)
    path = pretrained.save(tmp_path / "simclr.pt")
    model = CoHiClust(**config, pretrained=str(path), epochs=0).fit(data, seed=1, progress=False)
    assert torch.equal(model.transform(data), pretrained.transform(data))
    assert "pretrain" not in [r["phase"] for r in model.history_.records]
    with pytest.raises(ValueError, match="does not match"):
        CoHiClust(**{**config, "contrastive_head": "mlp"}, pretrained=str(path), epochs=0).fit(data, progress=False)


@pytest.mark.slow  # ten fits of the demo's recipe, ~20 s each at one thread
def test_digits_small_cnn_beats_kmeans_on_raw_pixels_on_average_over_ten_seeds():
    """Issue 16's acceptance, "CoHiClust (small CNN) beats k-means on raw pixels in ACC and NMI", as the
    mean over fit seeds 0-9 (one seed cannot carry it, nor five: a seed's outcome moves between CPUs,
    and the fits spread by 0.16 in ACC). Measured 2026-12-07 (2-core CPU, one thread, each epoch's
    short last batch dropped as the official loader does): ACC 0.768 / 0.722 / 0.802 / 0.865 / 0.839 /
    0.885 / 0.863 / 0.815 / 0.780 / 0.876, NMI 0.795 / 0.797 / 0.798 / 0.837 / 0.830 / 0.858 / 0.841 /
    0.818 / 0.802 / 0.855: mean 0.822 / 0.823 against k-means' 0.792 / 0.742, so the bar holds by 0.030 /
    0.081 (seeds 0-4 alone: by 0.007 / 0.069; keeping the short batch the ten seeds gave 0.828 / 0.784)."""
    torch.set_num_threads(1)
    data = pyro_hc.load_dataset("digits")
    labels = data.y.numpy()
    kmeans = KMeans(10, n_init=10, random_state=0).fit(data.flat().numpy())
    baseline = {"acc": cluster_acc(labels, kmeans.labels_), "nmi": nmi(labels, kmeans.labels_)}
    runs = []
    for seed in range(10):
        model = pyro_hc.get_model(
            "cohiclust", depth=4, n_leaves=10, backbone="small_cnn", crop_scale=(0.7, 1.0), pretrain_epochs=10,
            epochs=30, batch_size=128, lr=3e-3, prune_start=10,
        )
        runs.append(pyro_hc.evaluate(model.fit(data, seed=seed, progress=False), data))
    mean = {key: float(np.mean([run[key] for run in runs])) for key in ("acc", "nmi")}
    assert mean["acc"] > baseline["acc"] and mean["nmi"] > baseline["nmi"], (mean, baseline, runs)


def test_digits_small_cnn_comes_near_kmeans_on_raw_pixels(tmp_path):
    """The demo's recipe (10 SimCLR + 30 tree epochs) against k-means on the raw pixels (ACC 0.792, NMI 0.742).

    Measured 2026-12-07 (2-core CPU, one thread, the short last batch dropped), fit seeds 0-9: ACC
    0.768 / 0.722 / 0.802 / 0.865 / 0.839 / 0.885 / 0.863 / 0.815 / 0.780 / 0.876, NMI 0.795 / 0.797 /
    0.798 / 0.837 / 0.830 / 0.858 / 0.841 / 0.818 / 0.802 / 0.855; ACC - k-means -0.070 .. +0.093, NMI -
    k-means +0.053 .. +0.116. On average the tree beats k-means (the slow test above), but not at every
    seed, and the outcome at a seed differs between CPUs. The bars sit 0.080 (ACC) and 0.153 (NMI)
    below the worst of the ten seeds (0.126 / 0.153 below seed 0's own) and still fail a collapse to
    one leaf (ACC 0.10, NMI 0), random leaves (NMI ~0.01) or a tree whose ten leaves hold five digit
    pairs (ACC <= 0.5).
    """
    torch.set_num_threads(1)
    data = pyro_hc.load_dataset("digits")
    labels = data.y.numpy()
    kmeans = KMeans(10, n_init=10, random_state=0).fit(data.flat().numpy())
    baseline = {"acc": cluster_acc(labels, kmeans.labels_), "nmi": nmi(labels, kmeans.labels_)}

    model = pyro_hc.get_model(
        "cohiclust", depth=4, n_leaves=10, backbone="small_cnn", crop_scale=(0.7, 1.0), pretrain_epochs=10,
        epochs=30, batch_size=128, lr=3e-3, prune_start=10,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the tree must reach 10 leaves in time
        model.fit(data, seed=0, progress=False)
    scores = pyro_hc.evaluate(model, data)
    assert scores["acc"] > baseline["acc"] - 0.15 and scores["nmi"] > baseline["nmi"] - 0.10, (scores, baseline)

    tree = model.tree
    assert len(tree.leaves()) == 10 and len(tree.events) == 6
    assert all(e["kind"] == "prune" for e in tree.events)
    proba = model.predict_proba(data)
    assert proba.shape == (len(data), 10) and torch.allclose(proba.sum(-1), torch.ones(len(data)), atol=1e-5)
    predicted = model.predict(data)
    assert set(predicted.tolist()) <= set(tree.leaves())
    assert torch.equal(predicted, torch.as_tensor(tree.leaves())[proba.argmax(-1)])
    assert model.transform(data).shape == (len(data), 128)
    phases = [r["phase"] for r in model.history_.records]
    assert phases == ["pretrain"] * 10 + ["train"] * 30

    path = model.save(tmp_path / "cohiclust.pt")
    restored = pyro_hc.models.load(path)
    assert restored.tree.leaves() == tree.leaves()
    assert torch.equal(restored.predict(data), predicted)


# on a GPU (skipped without one) ----------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape,augment", [((1, 8, 8), "digits"), ((3, 12, 12), "simclr")])
def test_a_training_step_never_waits_for_the_gpu(shape, augment):
    """Augmentations, Eq. 2 under bf16 autocast and backward run without one host synchronisation."""
    torch.manual_seed(0)
    with local_params():
        module = CoHiClustModule(shape, depth=3, backbone="small_cnn", augment=augment, amp=True,
                                 channels_last=True, tree_head="mlp", contrastive_head="mlp").cuda()
    x = torch.rand(32, *shape, device="cuda")
    module.routing(x.device)  # built once per tree version (host work, outside the step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            terms = module.losses(x)
            terms["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(terms["loss"]) and module.node_mass.shape == (15,)
    assert module.tree_head[0].weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda_with_graphs_and_prunes(tmp_path):
    data = pyro_hc.load_dataset("digits").subset(torch.arange(256))
    model = pyro_hc.get_model("cohiclust", depth=2, n_leaves=3, backbone="small_cnn", pretrain_epochs=1, epochs=3,
                              prune_start=0, amp=True, channels_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a step that cannot be captured warns
        model.fit(data, batch_size=64, device="cuda", progress=False, cuda_graphs=True)
    assert len(model.tree.leaves()) == 3 and len(model.tree.events) == 1
    on_gpu = model.predict_proba(data)
    assert torch.allclose(on_gpu.sum(-1), torch.ones(len(data)), atol=1e-5)
    restored = pyro_hc.load(model.save(tmp_path / "m.pt"), device="cpu")
    assert restored.tree.leaves() == model.tree.leaves()
    assert torch.allclose(restored.predict_proba(data), on_gpu, atol=5e-2)  # the GPU ran the backbone in bf16

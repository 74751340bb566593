"""HCRL's initial tree from the pretrained embedding (``init_tree="embedding"``) and its builder,
:func:`pyro_hc.baselines.kmeans_ward_levels`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyro_hc
from pyro_hc.baselines import best_ward_cut, kmeans_leaves, kmeans_ward_levels, label_tree_groups, level_group_counts
from pyro_hc.distributions import sibling_order
from pyro_hc.heuristics.elbo_moves import conjugate_sticks
from pyro_hc.heuristics.elbo_moves import ELBOStructureMoves
from pyro_hc.infer import local_params
from pyro_hc.models.hcrl import _initial_tree_elbo, tree_from_level_groups

TINY = dict(latent_dim=2, hidden_dims=(16,), pretrain_epochs=1, capacity=32)


def test_level_group_counts_fan_out_evenly_and_never_shrink():
    assert level_group_counts(20, 3) == [4, 20]
    assert level_group_counts(20, 4) == [3, 7, 20]
    assert level_group_counts(9, 3) == [3, 9]
    assert level_group_counts(1, 4) == [1, 1, 1]
    assert level_group_counts(2, 2) == [2]


def test_kmeans_ward_levels_groups_are_nested_and_follow_the_blobs():
    """Three well separated pairs of blobs: level 1 finds the pairs, level 2 (the leaves) the blobs."""
    rng = np.random.RandomState(0)
    centres = np.array([[0, 0], [0, 3], [40, 0], [40, 3], [0, 40], [3, 40]], dtype=float)
    blob = np.repeat(np.arange(6), 30)
    x = centres[blob] + 0.2 * rng.randn(len(blob), 2)
    groups = kmeans_ward_levels(x, 6, depth=3, seed=0)
    assert groups.shape == (len(x), 2) and groups.dtype == np.int64
    assert sorted(np.unique(groups[:, 0])) == [0, 1] or len(np.unique(groups[:, 0])) == level_group_counts(6, 3)[0]
    # every blob is one leaf, and every leaf lies inside one level-1 group (nesting)
    for b in range(6):
        assert len(np.unique(groups[blob == b, 1])) == 1
    for leaf in np.unique(groups[:, 1]):
        assert len(np.unique(groups[groups[:, 1] == leaf, 0])) == 1
    # at depth 4 with 3 groups above 6 leaves (level_group_counts(6, 4) == [2, 3, 6]) the pairs are the 3 groups
    deep = kmeans_ward_levels(x, 6, depth=4, seed=0)
    pair = blob // 2
    for p in range(3):
        assert len(np.unique(deep[pair == p, 1])) == 1
    assert len(np.unique(deep[:, 1])) == 3


@pytest.mark.parametrize("bad", [dict(n_leaves=0), dict(n_leaves=500), dict(n_leaves=2.0), dict(depth=1),
                                 dict(group_counts=[5]), dict(group_counts=[0]), dict(depth=4, group_counts=[3, 2])])
def test_kmeans_ward_levels_rejects_bad_arguments(bad):
    x = np.random.RandomState(0).randn(50, 3)
    with pytest.raises(ValueError):
        kmeans_ward_levels(x, **{"n_leaves": 4, "depth": 3, **bad})


@pytest.mark.parametrize("coupling", [1.0, None])
def test_the_initial_trees_elbo_peaks_at_the_number_of_blobs(coupling):
    """The Occam factor at work: five blobs (5 sd apart) in two groups, scored as depth-3 initial trees
    of 1 .. 12 k-means leaves under the search's own priors (child means on the parent's, or
    independent) — the ELBO rises to 5 leaves and falls after, where every further leaf splits a
    blob. (The Normal–Gamma prior expects nodes a tenth of the embedding's variance wide: with the
    groups 40 sd apart instead, tight blobs cost more than they explain and the scan stops at 3.)"""
    rng = np.random.RandomState(0)
    centres = np.array([[0, 0], [0, 5], [5, 0], [14, 14], [19, 14]], dtype=float)
    blob = np.repeat(np.arange(5), 80)
    z = torch.as_tensor(centres[blob] + rng.randn(len(blob), 2), dtype=torch.float32)
    moves = ELBOStructureMoves(stick_concentration=3.0, mean_coupling=coupling)
    log_eta = torch.log(torch.tensor([0.05, 0.05, 0.9]))
    scores = {k: _initial_tree_elbo(tree_from_level_groups(kmeans_ward_levels(z, k, depth=3, seed=0)), z,
                                    torch.zeros_like(z), log_eta, moves) for k in range(1, 13)}
    best = max(scores, key=scores.get)
    assert best == 5, scores
    assert scores[1] < scores[2] < scores[5] and scores[12] < scores[5] - 20, scores


def test_init_leaves_elbo_starts_from_the_best_scoring_tree_and_logs_every_score(blobs):
    with local_params():
        settings = {**TINY, "pretrain_epochs": 30, "latent_dim": 4}  # an embedding with clusters to count
        model = pyro_hc.get_model("hcrl2", depth=3, **settings, init_tree="embedding").fit(blobs, epochs=0, seed=0,
                                                                                          progress=False)
        event = model.tree.events[0]
        scores = dict(event["elbo_by_leaves"])
        # 1 .. 30 leaves, as far as capacity (32 nodes) holds the tree: 26 leaves under 5 groups at most
        assert sorted(scores) == [k for k in range(1, 31) if 1 + sum(level_group_counts(k, 3)) <= TINY["capacity"]]
        assert event["kmeans_leaves"] == max(scores, key=scores.get)
        assert len(model.tree.leaves()) == event["kmeans_leaves"]
        # the fit started from the best tree of both scans, and its logged score is its ELBO
        module = model.module_
        z = model.transform(blobs)
        assert event["groups"][-1] == event["kmeans_leaves"]
        group_scores = dict(event["elbo_by_groups"])  # level-1 counts 1, 2, ... scanned at the chosen leaves
        assert event["kmeans_leaves"] >= 3 and list(group_scores)[:3] == ["1", "2", "3"]
        rebuilt = tree_from_level_groups(kmeans_ward_levels(z, event["kmeans_leaves"], 3, seed=0,
                                                            group_counts=event["groups"][:-1]))
        assert sorted(rebuilt[0].paths()) == sorted(model.tree.paths())
        with torch.no_grad():
            log_eta = module.level_log_proportions(blobs.x)
        score = _initial_tree_elbo(rebuilt, z, torch.zeros_like(z), log_eta, model.heuristics(0))
        best = max(scores[event["kmeans_leaves"]], max(group_scores.values()))
        assert score == pytest.approx(best, rel=1e-4, abs=1e-2)


@pytest.fixture(scope="module")
def blobs():
    return pyro_hc.synthetic_tree(depth=2, branching=3, noise=0.5, separation=4.0, n_per_leaf=30, seed=0)


@pytest.mark.parametrize("name,depth", [("hcrl2", 3), ("hcrl1", 4)])
def test_the_initial_tree_is_kmeans_and_ward_on_the_pretrained_embedding(name, depth, blobs):
    """Before the first SVI step (``epochs=0``): every leaf at full depth, the groups of
    :func:`kmeans_ward_levels` on the pretrained embedding, siblings created heaviest first, every
    node at its subtree's mean and spread, the sticks at their conjugate posterior; no labels read."""
    unlabelled = blobs.x  # a bare tensor: nothing to read labels from
    with local_params():
        model = pyro_hc.get_model(name, depth=depth, **TINY, init_tree="embedding", init_leaves=9).fit(
            unlabelled, epochs=0, seed=3, progress=False)
        tree, module = model.tree, model.module_
        assert len(tree.leaves()) == 9 and all(tree.level(leaf) == depth - 1 for leaf in tree.leaves())
        assert [len([n for n in tree.nodes() if tree.level(n) == level]) for level in range(1, depth)] == \
            level_group_counts(9, depth)
        assert tree.events[0]["kind"] == "init_tree" and tree.events[0]["leaves"] == 9
        z = model.transform(unlabelled).double()
        groups = torch.as_tensor(kmeans_ward_levels(z.float(), 9, depth, seed=3))  # what the fit must have read
        members = {tree.root: torch.ones(len(z), dtype=torch.bool)}
        for level in range(1, depth):  # match every node of the level to the group whose mean it holds
            nodes = [n for n in tree.nodes() if tree.level(n) == level]
            labels = groups[:, level - 1]
            group_means = torch.stack([z[labels == g].mean(0) for g in range(int(labels.max()) + 1)])
            node_means = module.node_locs[nodes].detach().double()
            match = torch.cdist(node_means, group_means).argmin(1)
            assert sorted(match.tolist()) == list(range(len(nodes))), "one node per group"
            for node, g in zip(nodes, match.tolist()):
                members[node] = labels == g
                assert bool(members[tree.parent(node)][members[node]].all()), "a node's data lie in its parent's"
        for node, inside in members.items():
            np.testing.assert_allclose(module.node_locs[node].detach().double().numpy(), z[inside].mean(0).numpy(),
                                       atol=1e-4)
            np.testing.assert_allclose(module.node_scales[node].detach().double().numpy(),
                                       z[inside].std(0, unbiased=False).clamp_min(1e-3).numpy(), atol=1e-3)
        for parent in tree.internal_nodes():
            masses = [int(members[child].sum()) for child in sibling_order(tree, parent)]
            assert masses == sorted(masses, reverse=True), "stick-breaking order: heaviest sibling first"
        resp = torch.zeros(len(z), len(tree.paths()), depth)
        for row, path in enumerate(tree.paths()):
            resp[members[path[-1]], row, -1] = 1.0
        expected = conjugate_sticks(tree, resp, model._stick_concentration())
        for node, (a, b) in expected.items():
            assert torch.allclose(module.stick_a[node].detach(), a, rtol=1e-4)
            assert torch.allclose(module.stick_b[node].detach(), b, rtol=1e-4)

@pytest.mark.parametrize("structure, start", [("elbo", "embedding"), ("paper", "path")])
def test_the_default_start_follows_the_structure_search(structure, start, blobs):
    """``init_tree=None``: the ELBO search starts from the embedding's tree, the paper's Algorithm 1
    from its single path; the explicit value is kept as given (``get_params``)."""
    model = pyro_hc.get_model("hcrl2", depth=3, **TINY, structure=structure).fit(blobs, epochs=0, seed=0,
                                                                                progress=False)
    assert model.get_params()["init_tree"] is None
    events = [event["kind"] for event in model.tree.events]
    if start == "embedding":  # the scan's choice of leaves is another test's; here, that it ran
        assert events[0] == "init_tree" and model.tree.events[0]["source"] == "embedding"
    else:
        assert "init_tree" not in events and len(model.tree.leaves()) == 1
    explicit = pyro_hc.get_model("hcrl2", depth=3, **TINY, structure=structure,
                                 init_tree="path" if start == "embedding" else "embedding", init_leaves=4)
    explicit.fit(blobs, epochs=0, seed=0, progress=False)
    assert len(explicit.tree.leaves()) == (1 if start == "embedding" else 4)


def test_the_initial_tree_is_kept_through_a_save_and_a_fit_goes_on_from_it(blobs, tmp_path):
    with local_params():
        model = pyro_hc.get_model("hcrl2", depth=3, **TINY, init_tree="embedding", init_leaves=6).fit(
            blobs, epochs=2, seed=0, progress=False)
        path = model.save(tmp_path / "model.pt")
        loaded = pyro_hc.models.load(path)
        assert loaded.tree.to_json() == model.tree.to_json()
        assert torch.equal(loaded.predict(blobs), model.predict(blobs))
        assert loaded.get_params()["init_tree"] == "embedding" and loaded.get_params()["init_leaves"] == 6


@pytest.mark.parametrize("bad", [dict(init_tree="kmeans"), dict(init_leaves=0), dict(init_leaves=2.5),
                                 dict(init_leaves=True), dict(init_tree="embedding", init_leaves=100_000),
                                 dict(init_tree="embedding", init_leaves=40, capacity=30),
                                 dict(init_tree="embedding", init_leaves="elbo", structure="paper"),
                                 dict(init_leaves="twenty")])
def test_bad_initial_tree_settings_fail_before_pretraining(bad, blobs):
    settings = {**TINY, "pretrain_epochs": 50, **bad}
    with pytest.raises(ValueError, match="init_"):
        pyro_hc.get_model("hcrl2", depth=3, **settings).fit(blobs, epochs=1, progress=False)


@pytest.mark.parametrize("depth", [3, 4])
def test_best_ward_cut_returns_the_level_one_count_the_score_prefers(depth):
    """Six blobs in three far pairs: a score that wants 3 level-1 groups gets the pairs, one that
    wants 6 gets every blob alone; every cut is nested and scanned once per count."""
    rng = np.random.RandomState(0)
    centres = np.array([[0, 0], [0, 3], [40, 0], [40, 3], [0, 40], [3, 40]], dtype=float)
    blob = np.repeat(np.arange(6), 20)
    centroids, leaf = kmeans_leaves(centres[blob] + 0.2 * rng.randn(len(blob), 2), 6, seed=0)
    seen = []

    def wants(k):
        def score(groups):
            seen.append(len(np.unique(groups[:, 0])))
            return -abs(len(np.unique(groups[:, 0])) - k)
        return score

    groups, value = best_ward_cut(centroids, leaf, depth, wants(3))
    assert value == 0 and groups.shape == (len(blob), depth - 1) and sorted(seen) == list(range(1, 7))
    for pair in range(3):
        assert len(np.unique(groups[blob // 2 == pair, 0])) == 1
    for column in range(1, depth - 1):  # nested: a group lies inside one group of the level above
        for g in np.unique(groups[:, column]):
            assert len(np.unique(groups[groups[:, column] == g, column - 1])) == 1
    groups, _ = best_ward_cut(centroids, leaf, depth, wants(6))
    assert len(np.unique(groups[:, 0])) == 6


def test_label_tree_groups_are_each_datums_true_nodes_with_short_paths_extended():
    """The unbalanced tree [2, 0]: a coarse node with two leaves, and a leaf directly under the root,
    which repeats down to full depth; deeper model trees repeat it further."""
    data = pyro_hc.synthetic_tree(tree=[2, 0], n_per_leaf=3, seed=0)
    graph, labels = data.tree, data.y.numpy()
    groups = label_tree_groups(graph, labels, depth=3)
    assert groups.shape == (len(labels), 2) and groups.dtype == np.int64
    parent_of = {child: parent for parent, child in graph.edges()}
    root = next(node for node in graph if graph.in_degree(node) == 0)
    for (level1, leaf), label in zip(groups.tolist(), labels.tolist()):
        node = next(n for n, lab in graph.nodes(data="label") if lab == label)
        assert leaf == node
        assert level1 == (node if parent_of[node] == root else parent_of[node])
    assert np.array_equal(label_tree_groups(graph, labels, depth=4)[:, :2], groups)
    assert np.array_equal(label_tree_groups(graph, labels, depth=4)[:, 2], groups[:, 1])


@pytest.mark.parametrize("bad", ["internal", "missing", "shallow", "float"])
def test_label_tree_groups_rejects_what_leaf_groups_cannot_say(bad):
    emits = pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=3, n_per_internal=2, seed=0)
    leaves = pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=3, seed=0)
    call = {"internal": lambda: label_tree_groups(emits.tree, emits.y.numpy(), 3),
            "missing": lambda: label_tree_groups(leaves.tree, np.array([0, 99]), 3),
            "shallow": lambda: label_tree_groups(leaves.tree, leaves.y.numpy(), 2),
            "float": lambda: label_tree_groups(leaves.tree, leaves.y.numpy().astype(float), 3)}[bad]
    with pytest.raises(ValueError):
        call()


def test_structure_elbo_scores_a_candidate_as_the_initial_scan_does(blobs):
    """Before the first SVI step the fitted tree is the scan's best, and ``structure_elbo`` of its
    groups is the score the scan logged for it; the default (the fitted tree, each datum on its
    predicted leaf) scores the groups ``predict`` gives."""
    with local_params():
        settings = {**TINY, "pretrain_epochs": 30, "latent_dim": 4}
        model = pyro_hc.get_model("hcrl2", depth=3, **settings).fit(blobs, epochs=0, seed=0, progress=False)
        event = model.tree.events[0]
        groups = kmeans_ward_levels(model.transform(blobs), event["kmeans_leaves"], 3, seed=0,
                                    group_counts=event["groups"][:-1])
        best = max(max(dict(event["elbo_by_leaves"]).values()), max(dict(event["elbo_by_groups"]).values()))
        assert model.structure_elbo(blobs, groups) == pytest.approx(best, rel=1e-4, abs=1e-2)
        ancestors = {path[-1]: path[1:] for path in model.tree.paths()}
        predicted = np.array([ancestors[int(leaf)] for leaf in model.predict(blobs)])
        assert model.structure_elbo(blobs) == model.structure_elbo(blobs.x, predicted)


def test_structure_elbo_prefers_the_true_tree_to_its_leaves_merged_or_split_at_random(blobs):
    """The Occam factor and the likelihood, seen through the public score: on well separated blobs
    (noise 0.5, 4 apart) the true tree beats the same tree with two sibling leaves merged into one
    (the likelihood loses) and with a leaf cut in two at random (the Occam factor: a second node
    that explains nothing more), and beats a tree with the true leaves in random groups."""
    with local_params():
        settings = {**TINY, "pretrain_epochs": 30, "latent_dim": 4}
        model = pyro_hc.get_model("hcrl2", depth=3, **settings).fit(blobs, epochs=0, seed=0, progress=False)
    true = label_tree_groups(blobs.tree, blobs.y.numpy(), depth=3)
    rng = np.random.RandomState(0)
    merged = true.copy()
    coarse = true[0, 0]
    fine = np.unique(true[true[:, 0] == coarse, 1])
    merged[merged[:, 1] == fine[1], 1] = fine[0]
    split = true.copy()
    members = np.flatnonzero(split[:, 1] == fine[0])
    split[members[rng.rand(len(members)) < 0.5], 1] = 10_000
    shuffled = true.copy()
    leaves = np.unique(true[:, 1])
    group_of_leaf = dict(zip(leaves, rng.permutation(np.repeat(np.unique(true[:, 0]), len(leaves) // 3))))
    shuffled[:, 0] = [group_of_leaf[leaf] for leaf in true[:, 1]]
    assert (shuffled[:, 0] != true[:, 0]).any()
    scores = {name: model.structure_elbo(blobs, groups) for name, groups in
              dict(true=true, merged=merged, split=split, shuffled=shuffled).items()}
    assert scores["true"] == max(scores.values()), scores
    assert scores["true"] > scores["merged"] + 50 and scores["true"] > scores["split"] + 10, scores


@pytest.mark.parametrize("groups", [np.zeros((5, 2), dtype=np.int64), np.zeros((270, 3), dtype=np.int64),
                                    np.zeros((270, 2)), np.zeros(270, dtype=np.int64)])
def test_structure_elbo_rejects_groups_of_the_wrong_shape_or_type(groups, blobs):
    model = pyro_hc.get_model("hcrl2", depth=3, **TINY).fit(blobs, epochs=0, seed=0, progress=False)
    with pytest.raises(ValueError, match="leaf_groups"):
        model.structure_elbo(blobs, groups)


def test_structure_elbo_needs_a_fitted_model(blobs):
    with pytest.raises(pyro_hc.NotFittedError, match="fit"):
        pyro_hc.get_model("hcrl1", depth=3, **TINY).structure_elbo(blobs)

"""The coarsened ELBO of HCRL's structure moves (``data_weight`` ζ, ``coarsening`` α; Miller & Dunson 2019)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyro_hc
from pyro_hc.baselines import kmeans_ward_levels
from pyro_hc.heuristics.elbo_moves import (ELBOStructureMoves, TreeNodePrior, birth_delta, merge_delta, relabel_delta,
                                           reparent_tree, tree_elbo)
from pyro_hc.models.hcrl import _initial_tree_elbo, tree_from_level_groups

from .test_coarse_moves import two_group_problem
from .test_hcrl import brute_force_tree_elbo, tiny_structure_problem

ZETA = 0.3


def test_coarsened_tree_elbo_equals_the_brute_force_coarsened_elbo():
    tree, resp, z_loc, z_var, log_eta, prior, gamma = tiny_structure_problem(1)
    path_nodes = torch.as_tensor(tree.paths())
    closed = tree_elbo(tree, path_nodes, resp, z_loc, z_var, log_eta, prior, gamma, data_weight=ZETA)
    brute = brute_force_tree_elbo(tree, resp, z_loc, z_var, log_eta, prior, gamma, data_weight=ZETA)
    assert float(closed) == pytest.approx(float(brute), rel=1e-8, abs=1e-8)
    # not the ELBO itself: the weight reaches every datum's term
    full = tree_elbo(tree, path_nodes, resp, z_loc, z_var, log_eta, prior, gamma)
    assert abs(float(full) - float(closed)) > 1.0


def test_coarsening_changes_every_moves_delta():
    """The moves' deltas at ζ equal brute-force differences (the parametrized tests of test_hcrl.py
    and test_coarse_moves.py); here: ζ does reach each of them."""
    tree, resp, z_loc, z_var, log_eta, prior, gamma = tiny_structure_problem(2)
    split = torch.rand(resp.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for delta in (lambda w: birth_delta(tree, 0, split, resp, z_loc, z_var, prior, gamma, data_weight=w),
                  lambda w: merge_delta(tree, 0, 1, resp, z_loc, z_var, prior, gamma, data_weight=w)):
        assert abs(float(delta(ZETA)) - float(delta(1.0))) > 1e-3
    tree, resp, z_loc, z_var, log_eta, prior, gamma = two_group_problem(1)
    moved = reparent_tree(tree, 4, 5)
    deltas = [float(relabel_delta(tree, moved, resp, z_loc, z_var, log_eta, prior, gamma, data_weight=w))
              for w in (ZETA, 1.0)]
    assert abs(deltas[0] - deltas[1]) > 1e-3


def test_coarsening_by_one_over_m_scores_m_copies_of_the_data_as_the_data_once():
    """Every term is weighted, child means on the parent's included (no brute force for that prior):
    the data repeated twice at ζ = 1/2 score exactly as the data once at ζ = 1."""
    tree, resp, z_loc, z_var, log_eta, base, gamma = two_group_problem(3)
    prior = TreeNodePrior(base, coupling=0.7)
    path_nodes = torch.as_tensor(tree.paths())
    once = tree_elbo(tree, path_nodes, resp, z_loc, z_var, log_eta, prior, gamma)
    twice = tree_elbo(tree, path_nodes, resp.repeat(2, 1, 1), z_loc.repeat(2, 1), z_var.repeat(2, 1),
                      log_eta.repeat(2, 1), prior, gamma, data_weight=0.5)
    assert float(twice) == pytest.approx(float(once), rel=1e-7, abs=1e-6)


def test_data_weight_is_alpha_over_n_capped_at_one_and_validated():
    assert ELBOStructureMoves().data_weight_for(10_000) == 1.0
    assert ELBOStructureMoves(coarsening=1000).data_weight_for(4000) == pytest.approx(0.25)
    assert ELBOStructureMoves(coarsening=1000).data_weight_for(1000) == 1.0
    assert ELBOStructureMoves(coarsening=1000).data_weight_for(600) == 1.0  # small data: the ELBO itself
    for bad in (0, -5.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="coarsening"):
            ELBOStructureMoves(coarsening=bad)


def test_coarsening_stops_the_number_of_leaves_growing_with_the_data():
    """Three clusters, each two unit Gaussians 3.5 sd apart: on 300 points the ELBO keeps 3 leaves,
    on 15,000 it splits every cluster in two (6 leaves score higher); coarsened at α = 300 the
    15,000 points are again scored as 300 would be, and 3 leaves win; the 300 points themselves are
    not coarsened at α = 300 (ζ = min(1, α / N) = 1)."""
    def gap(per_cluster, coarsening):
        rng = np.random.RandomState(0)
        centres = np.array([[0, 0], [12, 0], [6, 12]], dtype=float)
        cluster = np.repeat(np.arange(3), per_cluster)
        side = rng.randint(0, 2, len(cluster)) * 2 - 1
        z = torch.as_tensor(centres[cluster] + np.stack([side * 1.75, np.zeros(len(cluster))], 1)
                            + rng.randn(len(cluster), 2), dtype=torch.float32)
        moves = ELBOStructureMoves(stick_concentration=3.0, mean_coupling=1.0, coarsening=coarsening)
        log_eta = torch.log(torch.tensor([0.05, 0.05, 0.9]))
        score = {k: _initial_tree_elbo(tree_from_level_groups(kmeans_ward_levels(z, k, depth=3, seed=0,
                                                                                 group_counts=[3])),
                                       z, torch.zeros_like(z), log_eta, moves) for k in (3, 6)}
        return score[6] - score[3]

    assert gap(5000, None) > 500  # measured +1048 nats
    assert gap(5000, 300.0) < -5  # measured −18.6
    assert gap(100, None) < 0  # measured −3.7: the small sample does not split either
    assert gap(100, 300.0) == gap(100, None)


def test_hcrl_passes_its_coarsening_to_the_moves():
    model = pyro_hc.get_model("hcrl2", elbo_coarsening=500.0)
    assert model.heuristics(0).coarsening == 500.0
    assert pyro_hc.get_model("hcrl2").heuristics(0).coarsening == 3000.0  # the default: N <= 3000 not coarsened
    assert pyro_hc.get_model("hcrl2", elbo_coarsening=None).heuristics(0).coarsening is None
    digits = pyro_hc.load_dataset("digits", n_samples=40)
    for bad in (0.0, -1.0, float("inf"), "1000", True):
        with pytest.raises(ValueError, match="elbo_coarsening"):
            pyro_hc.get_model("hcrl2", elbo_coarsening=bad, pretrain_epochs=1, epochs=1).fit(digits, progress=False)


def test_auto_mean_coupling_is_one_on_uncoarsened_data_and_tighter_on_coarsened_data():
    from pyro_hc.heuristics.elbo_moves import COARSENED_MEAN_COUPLING

    moves = pyro_hc.get_model("hcrl2").heuristics(0)  # the defaults: "auto" at α = 3000
    assert moves.mean_coupling == "auto" and COARSENED_MEAN_COUPLING > 1
    assert moves.mean_coupling_for(3000) == 1.0 and moves.mean_coupling_for(3001) == COARSENED_MEAN_COUPLING
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    assert moves.node_prior(z, torch.zeros_like(z)).coupling == 1.0
    coarse = ELBOStructureMoves(mean_coupling="auto", coarsening=20.0)  # 40 points weigh ζ = 0.5 each
    assert coarse.node_prior(z, torch.zeros_like(z)).coupling == COARSENED_MEAN_COUPLING
    # never coarsened: κ = 1 at any size; a number is kept as given; None: independent node priors
    assert ELBOStructureMoves(mean_coupling="auto").mean_coupling_for(10**6) == 1.0
    assert ELBOStructureMoves(mean_coupling=2.5, coarsening=20.0).mean_coupling_for(40) == 2.5
    assert not isinstance(ELBOStructureMoves(coarsening=20.0).node_prior(z, torch.zeros_like(z)), TreeNodePrior)
    digits = pyro_hc.load_dataset("digits", n_samples=40)
    for bad in ("tight", True, 0.0, -1.0):
        with pytest.raises(ValueError, match="mean_coupling"):
            pyro_hc.get_model("hcrl2", elbo_mean_coupling=bad, pretrain_epochs=1, epochs=1).fit(digits, progress=False)

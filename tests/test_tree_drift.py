"""GaussianTreeDrift: the VAE-nCRP prior over node means."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_hc.distributions import GaussianTreeDrift


def chain():
    # 0 is the root, 1 its child, 2 and 3 children of 1
    return torch.tensor([-1, 0, 1, 1]), torch.tensor([0, 1, 2, 2])


def normal_logpdf(x, loc, scale):
    return -0.5 * math.log(2 * math.pi) - math.log(scale) - (x - loc) ** 2 / (2 * scale**2)


def test_log_prob_matches_hand_sum():
    parent, level = chain()
    d = GaussianTreeDrift(torch.tensor([0.5]), 2.0, 0.3, parent, level)
    value = torch.tensor([[1.0], [1.2], [0.7], [1.5]])
    expected = (normal_logpdf(1.0, 0.5, 2.0) + normal_logpdf(1.2, 1.0, 0.3)
                + normal_logpdf(0.7, 1.2, 0.3) + normal_logpdf(1.5, 1.2, 0.3))
    assert d.log_prob(value).item() == pytest.approx(expected, rel=1e-6)


def test_samples_drift_from_their_parents():
    torch.manual_seed(0)
    parent, level = chain()
    d = GaussianTreeDrift(torch.zeros(3), 1.0, 0.25, parent, level)
    samples = d.sample((20000,))
    assert samples.shape == (20000, 4, 3)
    drift = samples[:, 2] - samples[:, 1]
    assert drift.std().item() == pytest.approx(0.25, rel=0.03)
    assert samples[:, 0].std().item() == pytest.approx(1.0, rel=0.03)
    # siblings share their parent: their difference has variance 2 σ_N²
    assert (samples[:, 2] - samples[:, 3]).std().item() == pytest.approx(0.25 * math.sqrt(2), rel=0.03)


def test_batch_and_expand_shapes_and_gradients():
    parent, level = chain()
    root = torch.zeros(2, 5, requires_grad=True)
    d = GaussianTreeDrift(root, 1.0, 0.5, parent, level)
    assert d.batch_shape == (2,) and d.event_shape == (4, 5)
    assert d.expand((3, 2)).sample().shape == (3, 2, 4, 5)
    d.log_prob(torch.ones(2, 4, 5)).sum().backward()
    assert root.grad is not None and root.grad.abs().sum() > 0


def test_rejects_a_parent_table_that_is_not_a_forest():
    with pytest.raises(ValueError, match="forest"):
        GaussianTreeDrift(torch.zeros(2), 1.0, 1.0, torch.tensor([-1, 0]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="equal-length"):
        GaussianTreeDrift(torch.zeros(2), 1.0, 1.0, torch.tensor([-1, 0]), torch.tensor([0]))

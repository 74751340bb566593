"""The Normal–Gamma distribution: the conjugate prior of a Gaussian's mean and precision.

``λ ~ Gamma(a, b)`` (rate ``b``) and ``μ | λ ~ Normal(m, 1 / (κ λ))``, independently per
coordinate (a diagonal Gaussian's means and precisions). Its conjugate update from weighted data
whose points are themselves uncertain (the encoder's ``q(z|x) = Normal(z̄, s²)``) needs only the
expected sufficient statistics ``N = Σ r``, ``Σ r E z`` and ``Σ r E z²`` — which is what makes
memoized variational inference (Hughes & Sudderth, NIPS 2013) and its ELBO-tested birth / merge
moves closed-form: with the optimal ``q(μ, λ)`` (the posterior), a component's part of the ELBO,
``Σ_n r_n E_q log N(z_n | μ, λ) − KL(q(μ, λ) ‖ p(μ, λ))``, equals
``log Z(posterior) − log Z(prior) − (N / 2) log 2π`` (:meth:`NormalGamma.log_evidence`).
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import Gamma, Normal, kl_divergence, register_kl
from torch.distributions.utils import broadcast_all

__all__ = ["NormalGamma"]


class _MeanAndPrecision(constraints.Constraint):
    """Pairs ``(μ, λ)`` in the last dimension: μ real, λ positive."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        return (value.shape[-1] == 2) & torch.isfinite(value[..., 0]) & (value[..., 1] > 0)


class NormalGamma(TorchDistribution):
    """Normal–Gamma over ``(μ, λ)`` (event shape ``(2,)``: mean then precision).

    Parameters
    ----------
    loc:
        ``m``, the mean of μ.
    precision_scale:
        ``κ > 0``: μ's precision is ``κ λ`` (κ pseudo-observations' worth of certainty about μ).
    concentration, rate:
        ``a > 0``, ``b > 0`` of λ's Gamma (mean ``a / b``).

    The parameters broadcast to the batch shape (one distribution per coordinate).
    """

    arg_constraints = {"loc": constraints.real, "precision_scale": constraints.positive,
                       "concentration": constraints.positive, "rate": constraints.positive}
    support = _MeanAndPrecision()
    has_rsample = False

    def __init__(self, loc, precision_scale, concentration, rate, validate_args=None) -> None:
        self.loc, self.precision_scale, self.concentration, self.rate = broadcast_all(
            loc, precision_scale, concentration, rate)
        super().__init__(self.loc.shape, torch.Size((2,)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: D102 (see Distribution.expand)
        new = self._get_checked_instance(NormalGamma, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "precision_scale", "concentration", "rate"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(NormalGamma, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            precision = Gamma(self.concentration, self.rate).sample(sample_shape)
            mean = Normal(self.loc, (self.precision_scale * precision).rsqrt()).sample()
            return torch.stack([mean, precision], -1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        mean, precision = value[..., 0], value[..., 1]
        return (Gamma(self.concentration, self.rate).log_prob(precision)
                + Normal(self.loc, (self.precision_scale * precision).rsqrt()).log_prob(mean))

    @property
    def mean(self) -> Tensor:
        return torch.stack([self.loc, self.concentration / self.rate], -1)

    # conjugate updates ---------------------------------------------------------------------

    def log_normalizer(self) -> Tensor:
        """``log Z`` of the unnormalised density ``λ^(a-½) exp(-b λ - κ λ (μ - m)² / 2)``."""
        return (torch.lgamma(self.concentration) - self.concentration * self.rate.log()
                + 0.5 * math.log(2 * math.pi) - 0.5 * self.precision_scale.log())

    def posterior(self, count: Tensor, sum_z: Tensor, sum_z2: Tensor) -> NormalGamma:
        """The posterior after weighted points with ``N = Σ r``, ``Σ r E z``, ``Σ r E z²`` (broadcast)."""
        kappa = self.precision_scale + count
        loc = (self.precision_scale * self.loc + sum_z) / kappa
        rate = self.rate + 0.5 * (sum_z2 + self.precision_scale * self.loc.square() - kappa * loc.square())
        return NormalGamma(loc, kappa, self.concentration + 0.5 * count, rate.clamp_min(1e-12 * self.rate))

    def log_evidence(self, count: Tensor, sum_z: Tensor, sum_z2: Tensor) -> Tensor:
        """``max_q Σ_n r_n E log N(z_n | μ, λ) - KL(q ‖ self)`` per coordinate, from the statistics.

        Attained at ``q = self.posterior(...)``; equal to ``log Z(q) - log Z(self) - (N/2) log 2π``.
        """
        return (self.posterior(count, sum_z, sum_z2).log_normalizer() - self.log_normalizer()
                - 0.5 * count * math.log(2 * math.pi))

    def expected_log_likelihood(self, z_loc: Tensor, z_var: Tensor) -> Tensor:
        """``E_{(μ,λ) ~ self, z ~ Normal(z_loc, z_var)} log Normal(z | μ, 1/λ)`` per coordinate."""
        expected_log_precision = torch.digamma(self.concentration) - self.rate.log()
        expected_precision = self.concentration / self.rate
        return 0.5 * (expected_log_precision - math.log(2 * math.pi)
                      - expected_precision * ((z_loc - self.loc).square() + z_var) - 1.0 / self.precision_scale)


@register_kl(NormalGamma, NormalGamma)
def _kl_normal_gamma(q: NormalGamma, p: NormalGamma) -> Tensor:
    """``KL(q ‖ p)`` per coordinate: the Gammas' KL plus the expected KL of the conditional Normals."""
    ratio = p.precision_scale / q.precision_scale
    return (kl_divergence(Gamma(q.concentration, q.rate), Gamma(p.concentration, p.rate))
            + 0.5 * (ratio - 1 - ratio.log())
            + 0.5 * p.precision_scale * (q.concentration / q.rate) * (q.loc - p.loc).square())

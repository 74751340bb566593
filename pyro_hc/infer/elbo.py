"""Pyro's ELBOs without host synchronisation in ``differentiable_loss``.

``Trace_ELBO.differentiable_loss`` reads every sample site's log-probability back to the host
(``torch_item``) and both it and ``TraceEnum_ELBO`` check the loss for NaN on the host
(``warn_if_nan``). On a GPU each read stalls the Python thread until the device has caught up, so
the next step's tracing cannot overlap the current step's kernels, and a step cannot be captured
as a CUDA graph at all. The classes here compute the same value and the same gradient with the
bookkeeping kept on the device; the engine checks the loss for NaN itself, a run of steps at a
time (``SVIEngine(check_every=...)``).

They rely on Pyro 1.9's internals (``Trace_ELBO._get_traces``,
``pyro.infer.traceenum_elbo._compute_dice_elbo`` and ``_compute_model_factors``);
``tests/test_engine.py`` compares them with Pyro's own classes.
"""

from __future__ import annotations

import torch
from opt_einsum import shared_intermediates
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_dice_elbo, _compute_model_factors
from pyro.infer.util import is_identically_zero
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree
from pyro.ops.rings import SampleRing

__all__ = ["DeviceTrace_ELBO", "DeviceTraceEnum_ELBO"]


class DeviceTrace_ELBO(Trace_ELBO):
    """``Trace_ELBO`` whose ``differentiable_loss`` never reads a tensor back to the host."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        surrogate_loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = 0.0
            surrogate_elbo = 0.0
            log_r = None
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo + site["log_prob_sum"].detach()
                    surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    log_prob, score_function_term, entropy_term = site["score_parts"]
                    elbo = elbo - site["log_prob_sum"].detach()
                    if not is_identically_zero(entropy_term):
                        surrogate_elbo = surrogate_elbo - entropy_term.sum()
                    if not is_identically_zero(score_function_term):  # non-reparameterised guide sites
                        if log_r is None:
                            log_r = _compute_log_r(model_trace, guide_trace)
                        term = log_r.sum_to(site["cond_indep_stack"])
                        surrogate_elbo = surrogate_elbo + (term * score_function_term).sum()
            loss = loss - elbo / self.num_particles
            surrogate_loss = surrogate_loss - surrogate_elbo / self.num_particles
        if not torch.is_tensor(surrogate_loss) or not surrogate_loss.requires_grad:
            raise ValueError(f"the ELBO cannot be differentiated: {surrogate_loss}")
        # the value of the ELBO, the gradient of the surrogate (as Pyro's class returns)
        return loss + (surrogate_loss - surrogate_loss.detach())


def _reparameterised(guide_trace) -> bool:
    """Whether every guide site is reparameterised and none is enumerated (Dice's weights are all 1)."""
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            if site["infer"].get("enumerate") or not is_identically_zero(site["score_parts"].score_function):
                return False
    return True


def _compute_reparameterised_elbo(model_trace, guide_trace) -> torch.Tensor:
    """``_compute_dice_elbo`` for a reparameterised guide: the model's marginal costs (enumerated
    sites summed out exactly) plus the guide's, each summed.

    Pyro's ``Dice.compute_expectation`` would weight every cost by a probability of 1 after a
    ``mask.all()`` check that reads the mask back to the host; here the sum is taken directly.
    """
    marginal_costs, log_factors, ordering, sum_dims, scale = _compute_model_factors(model_trace, guide_trace)
    elbo = 0.0
    if log_factors:
        dim_to_size = {}
        for terms in log_factors.values():
            for term in terms:
                dim_to_size.update(zip(term._pyro_dims, term.shape))
        with shared_intermediates() as cache:
            ring = SampleRing(cache=cache, dim_to_size=dim_to_size)
            log_factors = contract_tensor_tree(log_factors, sum_dims, ring=ring)
        for terms in log_factors.values():
            for term in terms:
                elbo = elbo + packed.scale_and_mask(term, scale=scale).sum()
    for terms in marginal_costs.values():
        for term in terms:
            elbo = elbo + term.sum()
    for site in guide_trace.nodes.values():
        if site["type"] == "sample":
            elbo = elbo - site["packed"]["log_prob"].sum()
    return elbo


class DeviceTraceEnum_ELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` whose ``differentiable_loss`` skips Pyro's host-side NaN check (and, for a
    reparameterised guide, Dice's host-side mask check)."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            if _reparameterised(guide_trace):
                elbo_particle = _compute_reparameterised_elbo(model_trace, guide_trace)
            else:
                elbo_particle = _compute_dice_elbo(model_trace, guide_trace)
            if is_identically_zero(elbo_particle):
                continue
            elbo = elbo + elbo_particle
        elbo = elbo / self.num_particles
        if not torch.is_tensor(elbo) or not elbo.requires_grad:
            raise ValueError(f"the ELBO cannot be differentiated: {elbo}")
        return -elbo

"""Logistic-normal (Laplace) approximation of a Dirichlet distribution.

HCRL's level proportions ``eta_n ~ Dirichlet(alpha)`` (Shin, Song & Moon, AAAI 2020,
Sec. 3.2) are not reparameterisable in a way that suits an amortised Gaussian encoder, so the
prior is replaced by its Laplace approximation in the softmax basis (MacKay 1998; Srivastava &
Sutton 2017, "ProdLDA", Eq. 3; Hennig et al. 2012): a Normal over logits ``h`` with
``softmax(h)`` approximately ``Dirichlet(alpha)``.  Models sample the logits with
``pyro.sample(..., Normal(loc, scale).to_event(1))`` and apply the softmax themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dirichlet_laplace_approximation"]


def dirichlet_laplace_approximation(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """Return the diagonal Normal over logits that approximates ``Dirichlet(alpha)``.

    With ``L`` categories (Srivastava & Sutton 2017, Eq. 3 / MacKay 1998)::

        mu_l      = log alpha_l - (1/L) sum_k log alpha_k
        sigma^2_l = (1/alpha_l) (1 - 2/L) + (1/L^2) sum_k 1/alpha_k

    and ``softmax(h)`` with ``h ~ Normal(mu, sigma)`` approximates ``Dirichlet(alpha)``.

    Parameters
    ----------
    alpha : Tensor
        ``[..., L]`` positive concentrations, ``L >= 2``; leading dims are batch dims.
        Array-likes and integer tensors are converted to the default floating dtype.
        Gradients flow to ``alpha``.

    Returns
    -------
    loc : Tensor
        ``[..., L]`` means ``mu`` of the logits.
    scale : Tensor
        ``[..., L]`` standard deviations ``sigma`` of the logits.

    Raises
    ------
    ValueError
        If ``alpha`` is a scalar, has fewer than two categories, or has an entry that is not
        positive (NaN included).

    Examples
    --------
    >>> loc, scale = dirichlet_laplace_approximation(torch.ones(3))
    >>> loc
    tensor([0., 0., 0.])
    >>> scale ** 2
    tensor([0.6667, 0.6667, 0.6667])
    """
    alpha = torch.as_tensor(alpha)
    if not alpha.is_floating_point():
        alpha = alpha.to(torch.get_default_dtype())
    if alpha.dim() < 1 or alpha.shape[-1] < 2:
        raise ValueError(
            "alpha must have shape [..., L] with L >= 2 categories, got shape "
            f"{tuple(alpha.shape)}"
        )
    if not bool((alpha > 0).all()):
        raise ValueError("every Dirichlet concentration in alpha must be positive (and not NaN)")
    n_categories = alpha.shape[-1]
    log_alpha = alpha.log()
    # ProdLDA Eq. 3 / MacKay 1998: the mean of the logits is log alpha centred per row.
    loc = log_alpha - log_alpha.mean(dim=-1, keepdim=True)
    inverse = alpha.reciprocal()
    variance = inverse * (1.0 - 2.0 / n_categories) + inverse.sum(
        dim=-1, keepdim=True
    ) / n_categories**2
    return loc, variance.sqrt()

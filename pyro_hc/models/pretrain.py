"""Autoencoder pretraining as a Pyro module loss, trained by the same SVI engine as every model.

VaDE, HCRL and k-DVAE start from an autoencoder whose embedding a mixture is then fitted to
(Jiang et al. 2017, Sec. 3.3); DeepECT pretrains a denoising one. Rather than a second training
loop, the reconstruction loss enters the ELBO through ``pyro.factor`` with an empty guide, so the
engine's optimiser, progress bar, NaN check and history serve pretraining too.
"""

from __future__ import annotations

import pyro
import torch
from pyro.nn import PyroModule

from ._plate import data_plate

__all__ = ["AutoencoderPretraining"]


class AutoencoderPretraining(PyroModule):
    """Deterministic autoencoder ``x -> encoder.embed(x) -> decoder.distribution``.

    Parameters
    ----------
    encoder:
        Any module with ``embed(x) -> z``.
    decoder:
        A :class:`~pyro_hc.nn.Decoder` (``reconstruction_loss(z, x)``).
    corruption:
        Fraction of input features zeroed at random (a denoising autoencoder); 0 turns it off.
    """

    def __init__(self, encoder: torch.nn.Module, decoder: torch.nn.Module, corruption: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= corruption < 1.0:
            raise ValueError(f"corruption must lie in [0, 1), got {corruption}")
        self.encoder = encoder
        self.decoder = decoder
        self.corruption = corruption

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        x_flat = x.reshape(x.shape[0], -1)
        x_in = x_flat
        if self.corruption > 0:
            x_in = x_flat * (torch.rand_like(x_flat) >= self.corruption)
        with data_plate(x, index, num_data):
            z = self.encoder.embed(x_in)
            pyro.factor("reconstruction", -self.decoder.reconstruction_loss(z, x_flat))

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: the autoencoder has no latent random variables."""

"""Autoencoder pretraining as a Pyro module loss, trained by the same SVI engine as every model.

VaDE, HCRL and k-DVAE start from an autoencoder whose embedding a mixture is then fitted to
(Jiang et al. 2017, Sec. 3.3); DeepECT pretrains a denoising one. Rather than a second training
loop, the reconstruction loss enters the ELBO through ``pyro.factor`` with an empty guide, so the
engine's optimiser, progress bar, NaN check and history serve pretraining too.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ._plate import data_plate

__all__ = ["AutoencoderPretraining", "LayerwiseDenoisingPretraining", "mirrored_linear_pairs"]


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


def mirrored_linear_pairs(encoder: nn.Module, decoder: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """The ``(encoder layer l, decoder layer L-1-l)`` pairs of a mirrored MLP autoencoder, input side first.

    ``encoder`` is a :class:`~pyro_hc.nn.NormalEncoder` (its ReLU trunk, then the mean head: the
    embedding layer), ``decoder`` a :class:`~pyro_hc.nn.Decoder` whose MLP mirrors it.
    """
    encoder_layers = [m for m in encoder.trunk if isinstance(m, nn.Linear)] + [encoder.loc_head]
    decoder_layers = [m for m in decoder.net if isinstance(m, nn.Linear)]
    if len(encoder_layers) != len(decoder_layers):
        raise ValueError(f"the encoder has {len(encoder_layers)} layers and the decoder {len(decoder_layers)}; "
                         "layer-wise pretraining needs a mirrored autoencoder")
    return list(zip(encoder_layers, reversed(decoder_layers)))


class LayerwiseDenoisingPretraining(nn.Module):
    """One greedy step of DEC's stacked denoising autoencoder (Xie et al. 2016, Sec. 3.2).

    Layer pair ``depth`` (encoder layer ``l`` and its mirror decoder layer) is trained as a
    one-hidden-layer denoising autoencoder of the output of the ``l`` encoder layers below it,
    which stay fixed: ``h = enc_{<l}(x)``, ``h̃`` is ``h`` with a fraction ``corruption`` of its
    entries zeroed, and the pair reconstructs ``h`` from ``h̃``. The outermost pair (``depth`` 0)
    reconstructs the data under the decoder's likelihood (Bernoulli or Normal); inner pairs
    reconstruct ``h`` (ReLU outputs, as in the full network) under squared error, DEC's loss.
    The encoder layer keeps its ReLU except the embedding layer (linear), as in DEC.

    A plain ``nn.Module`` rather than a ``PyroModule``: it wraps, in turn, layers of an encoder and
    a decoder that other modules own (see :mod:`pyro_hc.models.kdvae`). Only the pair's two layers
    receive gradients; the loss enters through ``pyro.factor`` with an empty guide.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, depth: int, corruption: float = 0.2) -> None:
        super().__init__()
        pairs = mirrored_linear_pairs(encoder, decoder)
        if not 0 <= depth < len(pairs):
            raise ValueError(f"depth must lie in [0, {len(pairs)}), got {depth}")
        if not 0.0 <= corruption < 1.0:
            raise ValueError(f"corruption must lie in [0, 1), got {corruption}")
        self.below = nn.ModuleList(enc for enc, _ in pairs[:depth])
        self.encoder_layer, self.decoder_layer = pairs[depth]
        self.is_embedding = depth == len(pairs) - 1
        self.decoder = decoder  # its likelihood (and Gaussian scale) scores the outermost pair
        self.depth = depth
        self.corruption = corruption

    def _reconstruction_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.depth > 0:
            return (torch.relu(out) - target).pow(2).sum(-1)
        if self.decoder.likelihood == "bernoulli":
            return -dist.Bernoulli(logits=out, validate_args=False).log_prob(target).sum(-1)
        return -dist.Normal(out, self.decoder.obs_scale).log_prob(target).sum(-1)

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        h = x.reshape(x.shape[0], -1)
        with torch.no_grad():  # the layers below are already trained and stay fixed
            for layer in self.below:
                h = torch.relu(layer(h))
        h_in = h * (torch.rand_like(h) >= self.corruption) if self.corruption > 0 else h
        code = self.encoder_layer(h_in)
        if not self.is_embedding:
            code = torch.relu(code)
        with data_plate(x, index, num_data):
            pyro.factor("reconstruction", -self._reconstruction_loss(self.decoder_layer(code), h))

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: the autoencoder has no latent random variables."""

"""Variational families used by the models: amortised encoders and global guides."""

from .encoders import NormalEncoder

__all__ = ["NormalEncoder"]

"""Variational families used by the models: amortised encoders and global guides.

The encoder networks themselves live in :mod:`pyro_hc.nn` with every other network block.
"""

from ..nn import NormalEncoder

__all__ = ["NormalEncoder"]

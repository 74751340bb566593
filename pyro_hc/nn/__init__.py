"""Every network building block of the zoo, in one place.

``mlp`` (plain and ``k``-member batched MLPs), ``encoders`` and ``decoders`` (the heads of the
variational and deterministic models), ``backbones`` (ResNets and a small CNN for images) and
``augment`` (per-image random views on the device). Models and guides import from here, so neither
has to import the other for a network, and no block is written twice.
"""

from .augment import AUGMENTATIONS, BatchAugment, affine_images, random_affine
from .backbones import BACKBONES, HEADS, STEMS, SmallCNN, make_backbone, make_head
from .decoders import LIKELIHOODS, BatchedDecoder, Decoder, MSEDecoder
from .encoders import BatchedEncoder, MLPEncoder, NormalEncoder
from .mlp import BatchedLinear, BatchedMLP, Flatten, MemberRows, mlp

__all__ = [
    "mlp", "Flatten", "BatchedLinear", "BatchedMLP", "MemberRows",
    "NormalEncoder", "BatchedEncoder", "MLPEncoder",
    "LIKELIHOODS", "Decoder", "BatchedDecoder", "MSEDecoder",
    "BACKBONES", "HEADS", "STEMS", "SmallCNN", "make_backbone", "make_head",
    "AUGMENTATIONS", "BatchAugment", "random_affine", "affine_images",
]

"""The models of the zoo, one file per paper, and the registry that names them.

Importing this package registers every model: ``get_model(name, **config)``, ``list_models()``,
``load(path)``.
"""

from ._registry import get_model, get_model_class, list_models, load, register_model
from .cohiclust import CoHiClust, CoHiClustModule
from .deepect import DeepECT, DeepECTModule
from .hcrl import HCRL1, HCRL2, HCRLModule
from .kdvae import KDAE, KDVAE, KDVAEModule
from .vade import VaDE, VaDEModule
from .vae import VAE, VAEModule
from .vae_ncrp import VAENCRP, VAENCRPModule

__all__ = [
    "register_model", "get_model", "get_model_class", "list_models", "load",
    "VaDE", "VaDEModule", "VAE", "VAEModule", "HCRL1", "HCRL2", "HCRLModule", "VAENCRP", "VAENCRPModule",
    "KDVAE", "KDAE", "KDVAEModule", "DeepECT", "DeepECTModule",
    "CoHiClust", "CoHiClustModule",
]

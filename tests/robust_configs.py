"""Tiny configurations of every registered model, for the robustness, fault and property tests.

Networks of a few units and one or two epochs per phase, so that a fit of 120 digits takes a
fraction of a second on one CPU thread while still running every phase of every model.
"""

from __future__ import annotations

TINY: dict[str, dict] = {
    "vae": dict(latent_dim=2, hidden_dims=(8,), epochs=2, batch_size=32),
    "vade": dict(n_clusters=3, latent_dim=2, hidden_dims=(8,), pretrain_epochs=2, epochs=2, batch_size=32,
                 init_candidates=2, selection_epochs=1),  # the ELBO selection, kept short for the fault tests
    "hcrl1": dict(depth=3, latent_dim=2, hidden_dims=(8,), pretrain_epochs=2, capacity=16, epochs=2,
                  batch_size=32, lock_epochs=0),
    "hcrl2": dict(depth=3, latent_dim=2, hidden_dims=(8,), pretrain_epochs=2, capacity=16, epochs=2,
                  batch_size=32, lock_epochs=0),
    "vae_ncrp": dict(depth=3, latent_dim=2, hidden_dims=(8,), pretrain_epochs=2, capacity=16, epochs=2,
                     batch_size=32, lock_epochs=0),
    "kdvae": dict(n_clusters=3, latent_dim=2, hidden_dims=(8,), epochs=2, warmup_epochs=2, vade_epochs=1,
                  vade_pretrain_epochs=1, vade_hidden_dims=(8,), batch_size=32),
    "kdae": dict(n_clusters=3, latent_dim=2, hidden_dims=(8,), epochs=2, warmup_epochs=2, vade_epochs=1,
                 vade_pretrain_epochs=1, vade_hidden_dims=(8,), batch_size=32),
    "deepect": dict(max_leaves=4, grow_interval=3, latent_dim=2, hidden_dims=(8,), pretrain_epochs=2, epochs=2,
                    batch_size=32, grow_sample=None),
    "cohiclust": dict(depth=2, n_leaves=3, backbone="small_cnn", pretrain_epochs=2, epochs=2, batch_size=32,
                      prune_start=0),
}

#: the training phases each model runs (the engine's ``phase`` labels), in order
PHASES: dict[str, tuple[str, ...]] = {
    "vae": ("train",),
    "vade": ("pretrain", "select", "train"),  # "select": each GMM candidate's warm-up
    "hcrl1": ("pretrain", "train"),
    "hcrl2": ("pretrain", "train"),
    "vae_ncrp": ("pretrain", "train"),
    "kdvae": ("warmup", "train"),  # after the initialising VaDE's own phases
    "kdae": ("warmup", "train"),
    "deepect": ("pretrain", "train"),
    "cohiclust": ("pretrain", "train"),
}

"""GPU smoke tests: every model trains and predicts on CUDA; skipped cleanly without a GPU (CI)."""

from __future__ import annotations

import pytest
import torch

import pyro_hc

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = {
    "vade": dict(latent_dim=4, hidden_dims=(32,), pretrain_epochs=1),
    "vae": dict(latent_dim=4, hidden_dims=(32,)),
    "hcrl2": dict(depth=3, latent_dim=4, hidden_dims=(32,), pretrain_epochs=1, capacity=16),
    "hcrl1": dict(depth=3, latent_dim=4, hidden_dims=(32,), pretrain_epochs=1, capacity=16),
    "vae_ncrp": dict(depth=3, latent_dim=4, hidden_dims=(32,), pretrain_epochs=1, capacity=16),
    "kdvae": dict(latent_dim=3, hidden_dims=(16,), warmup_epochs=1, vade_epochs=1, vade_pretrain_epochs=1,
                  vade_hidden_dims=(16,)),
    "kdae": dict(latent_dim=3, hidden_dims=(16,), warmup_epochs=1, vade_epochs=1, vade_pretrain_epochs=1,
                 vade_hidden_dims=(16,)),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_trains_on_cuda_and_matches_after_moving_to_cpu(name, tmp_path):
    data = pyro_hc.load_dataset("digits").subset(torch.arange(300))
    model = pyro_hc.get_model(name, **TINY[name]).fit(data, epochs=2, device="cuda", progress=False)
    assert model.device_.type == "cuda"
    assert all(p.is_cuda for p in model.module_.parameters())
    on_gpu = model.predict_proba(data)
    restored = pyro_hc.load(model.save(tmp_path / "m.pt"), device="cpu")
    assert torch.allclose(restored.predict_proba(data), on_gpu, atol=1e-4)

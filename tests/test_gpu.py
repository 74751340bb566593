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
    "cohiclust": dict(depth=2, n_leaves=3, backbone="small_cnn", pretrain_epochs=1, prune_start=0),
    "deepect": dict(latent_dim=3, hidden_dims=(16,), pretrain_epochs=1, max_leaves=3, grow_interval=2),
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


def test_cuda_graph_step_matches_the_eager_step():
    """A deterministic module (an autoencoder without corruption) trains to the same parameters
    whether each step is replayed from a CUDA graph or run eagerly; a last, smaller batch runs eagerly."""
    from pyro_hc.infer import SVIEngine, local_params
    from pyro_hc.nn import Decoder, NormalEncoder
    from pyro_hc.models.pretrain import AutoencoderPretraining

    torch.manual_seed(0)
    x = torch.rand(300, 20, device="cuda").bernoulli()
    with local_params():
        modules = []
        for _ in range(2):
            torch.manual_seed(1)
            modules.append(AutoencoderPretraining(NormalEncoder(20, (16,), 3), Decoder(3, [16], 20, "bernoulli")).cuda())
        eager = SVIEngine(modules[0], progress=False, lr=1e-2)
        graphed = SVIEngine(modules[1], progress=False, lr=1e-2, cuda_graphs=True)
        eager.fit(x, epochs=3, batch_size=64, seed=0)
        graphed.fit(x, epochs=3, batch_size=64, seed=0)
    assert graphed.cuda_graphs and graphed.graph_captures == 1
    for (name, a), b in zip(modules[0].named_parameters(), modules[1].parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert eager.history["loss"] == pytest.approx(graphed.history["loss"], rel=1e-5)


def test_hcrl2_trains_with_cuda_graphs_and_recaptures_after_structural_moves():
    data = pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=50, n_features=20, latent_dim=4, seed=0)
    model = pyro_hc.get_model("hcrl2", **TINY["hcrl2"], lock_epochs=2, structure="paper")  # GROW within 6 epochs
    model.fit(data, epochs=6, batch_size=32, device="cuda", progress=False, cuda_graphs=True)
    assert model.fit_info_["cuda_graphs"]
    captures = [r["graph_captures"] for r in model.history_.records if r["phase"] == "train"]
    assert captures and captures[-1] >= 2, "a grown tree must be recorded anew"
    assert len(model.tree.leaves()) >= 2, "GROW never fired"
    assert all(torch.isfinite(torch.tensor(model.history_["loss"])))
    proba = model.predict_proba(data)
    assert torch.allclose(proba.sum(-1), torch.ones(len(data)), atol=1e-4)

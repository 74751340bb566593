"""Run by ``torchrun --nproc_per_node 2`` from tests/test_distributed.py: fit a tiny HCRL2 with GROW /
PRUNE / MERGE on every rank (gloo, CPU) and write each rank's tree and parameters to OUT_DIR."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import pyro_hc
from pyro_hc.infer import CheckpointEvery
from pyro_hc.infer import distributed

torch.set_num_threads(1)
out = Path(sys.argv[1])
assert distributed.init_from_env(backend="gloo", timeout_s=60), "expected to run under torchrun with 2 ranks"
rank = distributed.rank()
data = pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=50, n_features=20, latent_dim=4, seed=0)
model = pyro_hc.get_model("hcrl2", depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=1, capacity=16,
                          grow_every=1, lock_epochs=2, structure="paper")  # GROW: the test checks its moves agree
# each rank names its own checkpoint file: only rank 0's may appear
model.fit(data, epochs=6, batch_size=32, seed=0, progress=False, device="cpu",
          callbacks=[CheckpointEvery(out / f"checkpoint-rank{rank}.pt", every=1)])
torch.save({"tree": model.tree.to_json(), "state": model.module_.state_dict(),
            "losses": model.history_["loss"], "noise": torch.rand(4)}, out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()

"""Run by ``torchrun --nproc_per_node 2`` from tests/test_distributed.py: fit a tiny DeepECT or CoHiClust
(``argv[1]``) on every rank (gloo, CPU) and write each rank's tree, parameters, losses and a fingerprint
of the module and tree after every step and epoch to ``OUT_DIR`` (``argv[2]``).

The fingerprints are taken inside the epoch (before the engine's epoch-end broadcast of rank 0's
parameters), so they show that the ranks agree at every step, not only after that broadcast.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

import pyro_hc
import pyro_hc.models.cohiclust  # noqa: F401  (registers "cohiclust")
import pyro_hc.models.deepect  # noqa: F401  (registers "deepect")
from pyro_hc.infer import Callback, distributed

torch.set_num_threads(1)


class Fingerprints(Callback):
    """After every step and at every epoch end: a hash of every state_dict tensor and of the tree."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def _record(self, state, where: str) -> None:
        digest = hashlib.sha1()
        for name, tensor in state.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        tree = getattr(state.module, "tree", None)
        if tree is not None:
            digest.update(json.dumps(tree.to_json(), sort_keys=True, default=str).encode())
        self.records.append((state.engine.phase, where, state.epoch, state.step, digest.hexdigest()))

    def on_step_end(self, state) -> None:
        self._record(state, "step")

    def on_epoch_end(self, state) -> None:
        self._record(state, "epoch")


name, out = sys.argv[1], Path(sys.argv[2])
# ranks that disagree on a move wait on each other's collectives: fail after a minute rather than half an hour
assert distributed.init_from_env(backend="gloo", timeout_s=60), "expected to run under torchrun with 2 ranks"
rank = distributed.rank()
fingerprints = Fingerprints()
if name == "deepect":
    data = pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=30, n_features=12, latent_dim=3, seed=0)
    # a split every 3 steps up to 5 leaves; the high prune threshold removes a child that starts with a
    # small share of its parent's weight or gets few points of a batch
    model = pyro_hc.get_model("deepect", max_leaves=5, grow_interval=3, prune_threshold=4.0, prune_check_every=1,
                              hidden_dims=(16,), latent_dim=3, lr=1e-3, pretrain_lr=1e-3, pretrain_epochs=1,
                              grow_sample=None)
    model.fit(data, epochs=4, batch_size=32, seed=0, progress=False, device="cpu", callbacks=[fingerprints])
elif name == "cohiclust":
    data = pyro_hc.load_dataset("digits").subset(torch.arange(96))
    model = pyro_hc.get_model("cohiclust", depth=2, n_leaves=2, backbone="small_cnn", pretrain_epochs=1,
                              prune_start=0)
    model.fit(data, epochs=3, batch_size=32, seed=0, progress=False, device="cpu", callbacks=[fingerprints])
else:
    raise SystemExit(f"unknown model {name!r}")
torch.save({"tree": model.tree.to_json(), "state": model.module_.state_dict(), "losses": model.history_["loss"],
            "fingerprints": fingerprints.records, "n_data": len(data)}, out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()

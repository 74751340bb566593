"""Multi-process training: two CPU ranks (gloo, launched by torchrun) end with the same tree and parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_hc.infer import distributed

ROOT = Path(__file__).resolve().parents[1]


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    t = torch.arange(3.0)
    distributed.all_reduce_sum_(t)
    assert torch.equal(t, torch.arange(3.0))
    assert distributed.init_from_env() is False  # no WORLD_SIZE: nothing to join


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_ranks_end_with_identical_trees_and_parameters(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "scripts" / "ddp_fit.py"), str(tmp_path)],
        check=True, env=env, capture_output=True, timeout=300,
    )
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    tree0 = json.loads(rank0["tree"]) if isinstance(rank0["tree"], str) else rank0["tree"]
    tree1 = json.loads(rank1["tree"]) if isinstance(rank1["tree"], str) else rank1["tree"]
    assert tree0 == tree1
    grows = [e for e in tree0["events"] if e["kind"] == "grow"]
    assert grows, "GROW never fired, so the test would not show the ranks agree on structural moves"
    assert rank0["state"].keys() == rank1["state"].keys()
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    # the two ranks saw different halves of each batch but report the same (all-reduced) epoch loss
    assert rank0["losses"] == rank1["losses"]
    # only rank 0 writes checkpoints
    assert (tmp_path / "checkpoint-rank0.pt").exists()
    assert not (tmp_path / "checkpoint-rank1.pt").exists()

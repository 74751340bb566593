"""Multi-process training: two CPU ranks (gloo, launched by torchrun) end with the same tree and parameters."""

from __future__ import annotations

import json
import os
import re
import signal
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
    _fit_two_ranks("ddp_fit.py", str(tmp_path))
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
    # ...with their own random streams: the same draws for both halves of a batch would correlate them
    assert not torch.equal(rank0["noise"], rank1["noise"])
    # only rank 0 writes checkpoints
    assert (tmp_path / "checkpoint-rank0.pt").exists()
    assert not (tmp_path / "checkpoint-rank1.pt").exists()


def _launch_two_ranks(script: str, args: tuple[str, ...], timeout: float) -> tuple[int, str]:
    """Run ``torchrun --nproc_per_node 2`` on gloo; return its exit code and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "scripts" / script), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks
        _, stderr = process.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (the ranks wait on each other?):\n{stderr[-6000:]}")
    return process.returncode, stderr


def _rank_traceback(stderr: str) -> str | None:
    """The first rank's own Python traceback, or None when only torchrun's summary has one."""
    start = stderr.find("Traceback")
    if start < 0 or "torch/distributed/run.py" in stderr[start:start + 600]:
        return None
    return stderr[start:][:6000]


def _fit_two_ranks(script: str, *args: str, timeout: float = 180) -> None:
    """``torchrun --nproc_per_node 2 tests/scripts/SCRIPT ARGS`` on gloo; the ranks' stderr shows on failure.

    Ranks that disagree on a structural move wait on each other's collectives; the script's process
    group times out after 60 s and, failing that, the whole process group is killed at ``timeout``.
    A rank that raised fails the test at once. A rank killed by a signal without a Python traceback
    (in one of two full-suite runs on this 2-core machine, CoHiClust's rank 0 died of SIGABRT within
    seconds, cause not found; the same test then passed 9 times in a row alone and the next full
    suite passed) is retried once.
    """
    code, stderr = _launch_two_ranks(script, args, timeout)
    if code != 0 and _rank_traceback(stderr) is None and re.search(r"exitcode\s*:\s*-\d+", stderr):
        first = stderr
        code, stderr = _launch_two_ranks(script, args, timeout)
        if code != 0:
            stderr = first[-3000:] + "\n... (retried once after a rank died of a signal) ...\n" + stderr
    if code != 0:
        shown = _rank_traceback(stderr)
        if shown is None:  # a rank killed by a signal: its last words before torchrun's summary
            shown = stderr[:3000] + "\n...\n" + stderr[-3000:] if len(stderr) > 6000 else stderr
        pytest.fail(f"torchrun failed ({code}):\n{shown}")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.parametrize("name", ["deepect", "cohiclust"])
def test_two_gloo_ranks_grow_and_prune_deepect_and_cohiclust_trees_alike_at_every_step(tmp_path, name):
    """Both ranks see different halves of every batch, yet decide the same splits and prunes, from the
    same all-reduced statistics, and hold the same tree, parameters and buffers after every step."""
    _fit_two_ranks("ddp_fit_trees.py", name, str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    tree0, tree1 = rank0["tree"], rank1["tree"]
    assert tree0 == tree1  # the same nodes and the same event log (steps, SSEs, shares, weights)
    kinds = [e["kind"] for e in tree0["events"]]
    if name == "deepect":
        splits = [e for e in tree0["events"] if e["kind"] == "split"]
        assert any(e["step"] > 0 for e in splits), "no split during training: the ranks never had to agree on one"
        assert "prune" in kinds, "no prune happened, so the test would not show the ranks agree on node weights"
        # the root's 2-means ran on every point, gathered from both ranks' shares of the embedding
        assert splits[0]["step"] == 0 and splits[0]["n_points"] == rank0["n_data"]
    else:
        assert kinds == ["prune", "prune"], kinds  # depth 2 (4 leaves) down to 2 leaves
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    assert rank0["losses"] == rank1["losses"]
    prints0, prints1 = rank0["fingerprints"], rank1["fingerprints"]
    assert len(prints0) == len(prints1) > 0
    differing = [a[:4] for a, b in zip(prints0, prints1) if a != b]
    assert not differing, f"the ranks' modules or trees differ after (phase, where, epoch, step) {differing[:5]}"

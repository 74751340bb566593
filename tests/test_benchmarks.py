"""Every benchmark script runs end to end with a tiny budget (as Pyro's tests/test_examples.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_hc.data import list_datasets

ROOT = Path(__file__).resolve().parents[1]
AVAILABLE = set(list_datasets(available=True))

SCRIPTS = {
    "vade_mnist.py": ["--n", "300", "--epochs", "1", "--pretrain-epochs", "1", "--hidden-dims", "32",
                      "--no-progress"],
    "kdvae_mnist.py": ["--n", "300", "--epochs", "1", "--warmup-epochs", "1", "--vade-epochs", "1",
                       "--vade-pretrain-epochs", "1", "--hidden-dims", "16", "--vade-hidden-dims", "16"],
    "speed.py": ["--hidden-dims", "16", "--steps", "2", "--warmup", "1", "--paths", "8", "--depths", "3",
                 "--clusters", "2", "--leaves", "2", "--cohiclust-depths", "2", "--cohiclust-backbone", "small_cnn",
                 "--compare-pyro-elbo", "--batch-size", "64", "--epoch", "--epoch-batch-sizes", "5000"],
    "cohiclust_mnist.py": ["--n", "300", "--backbone", "small_cnn", "--depth", "2", "--n-leaves", "3",
                           "--pretrain-epochs", "1", "--epochs", "2", "--prune-start", "0", "--batch-size", "64",
                           "--no-progress"],
    "deepect_mnist.py": ["--n", "300", "--pretrain-steps", "4", "--steps", "6", "--grow-interval", "2",
                         "--max-leaves", "4", "--hidden-dims", "32", "--grow-sample", "200", "--no-progress"],
    "hierarchy_recovery.py": ["--trees", "unbalanced", "--emission", "all", "--noise", "0.5", "--seeds", "1",
                              "--epochs", "2", "--pretrain-epochs", "1", "--hidden-dims", "16", "--n-per-leaf", "10",
                              "--n-per-internal", "5"],
    "hcrl_20newsgroups.py": ["--n", "300", "--seeds", "1", "--epochs", "1", "--pretrain-epochs", "1",
                             "--hidden-dims", "16", "--hkm-branching", "2", "--no-progress"],
    "reproduce.py": ["deepect_aug", "usps", "--scale", "0.0004", "--n", "300", "--set", "hidden_dims=[32]",
                     "--set", "max_leaves=4", "--set", "grow_interval=3", "--no-progress"],
    "hcrl_mnist.py": ["--n-train", "300", "--n-test", "100", "--epochs", "1", "--pretrain-epochs", "1",
                      "--hidden-dims", "32", "--nll-samples", "3", "--depths", "3"],
}


def test_every_benchmark_script_has_a_smoke_run():
    assert {p.name for p in (ROOT / "benchmarks").glob("*.py")} == set(SCRIPTS)


#: the data sets each script reads (speed.py draws MNIST-shaped random data; synthetic_tree is drawn)
REQUIRES = {"deepect_mnist.py": {"mnist", "usps"}, "reproduce.py": {"usps"}, "speed.py": set(),
            "hierarchy_recovery.py": set(), "hcrl_20newsgroups.py": {"20newsgroups"}}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_smoke_run(script, tmp_path):
    missing = sorted(REQUIRES.get(script, {"mnist"}) - AVAILABLE)
    if missing:
        pytest.skip(f"{', '.join(missing)} not on disk (set PYRO_HC_DATA)")
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *SCRIPTS[script], "--threads", "1",
                          "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{script} failed ({run.returncode}):\n{run.stderr[-4000:]}"
    record = json.loads(out.read_text())
    assert record["device"] in ("cpu", "cuda", "cuda:0")
    assert "metrics" in record or record["results"]

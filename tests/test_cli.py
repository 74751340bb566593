"""The ``pyro-hc`` command line: listing, fitting into a folder, evaluating it, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyro_hc import list_datasets, list_models
from pyro_hc.cli import main

TINY = ["--set", "latent_dim=3", "--set", "hidden_dims=[16]", "--set", "pretrain_epochs=1", "--epochs", "1"]


def test_list_names_models_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_models() + list_datasets():
        assert name in out


def test_fit_writes_run_and_evaluate_reproduces_it(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["fit", "vade", "--dataset", "digits", *TINY, "--no-progress", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    for name in ("acc", "nmi", "ari", "dendrogram_purity", "leaf_purity", "saved to"):
        assert name in printed
    assert {p.name for p in out_dir.iterdir()} >= {"model.pt", "tree.json", "metrics.json"}
    record = json.loads((out_dir / "metrics.json").read_text())
    assert record["config"]["latent_dim"] == 3 and record["config"]["hidden_dims"] == [16]
    assert main(["evaluate", str(out_dir)]) == 0
    evaluated = capsys.readouterr().out
    for name, value in record["metrics"].items():
        assert f"{name}" in evaluated and f"{value:.4f}" in evaluated


def test_checkpoint_every_writes_a_loadable_checkpoint(tmp_path):
    from pyro_hc.models import load

    out_dir = tmp_path / "run"
    assert main(["fit", "vade", *TINY, "--no-progress", "--checkpoint-every", "1", "--out", str(out_dir)]) == 0
    assert load(out_dir / "checkpoint.pt").tree.to_json() == load(out_dir / "model.pt").tree.to_json()


def test_dataset_names_are_normalised(tmp_path, capsys):
    assert main(["fit", "VaDE", "--dataset", "Digits", *TINY, "--no-progress", "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "nomodel"], "invalid choice"),
        (["fit", "vade", "--dataset", "nodata"], "digits"),
        (["fit", "vade", "--set", "n_clusterz=3"], "unknown setting"),
        (["fit", "vade", "--set", "nokeyvalue"], "KEY=VALUE"),
        (["fit", "vade", "--epochs", "-2"], "epochs"),
        (["fit", "vade", "--device", "tpu9"], "unknown device"),
        (["fit", "vade", "--checkpoint-every", "0", "--epochs", "1"], "every"),
        (["evaluate", "/nonexistent/run"], "metrics.json"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message(argv, message, capsys, tmp_path):
    if argv[0] == "fit" and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "x")]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code != 0
    assert message in capsys.readouterr().err


def test_unknown_model_lists_valid_choices(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "nomodel"])
    err = capsys.readouterr().err
    assert all(name in err for name in list_models())


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "pyro_hc.cli", "list"], capture_output=True, text=True, check=True)
    assert "vade" in result.stdout

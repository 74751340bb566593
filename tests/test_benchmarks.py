"""Every benchmark script runs end to end with a tiny budget (as Pyro's tests/test_examples.py does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyro_hc
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
    "hierarchy_recovery.py": ["--trees", "unbalanced", "--emission", "leaves", "all", "--noise", "0.5", "--seeds", "1",
                              "--epochs", "2", "--pretrain-epochs", "1", "--hidden-dims", "16", "--n-per-leaf", "10",
                              "--n-per-internal", "5", "--objective-check", "--models", "hcrl2,hcrl1,vade+ward"],
    "hcrl_20newsgroups.py": ["--n", "300", "--seeds", "1", "--epochs", "1", "--pretrain-epochs", "1",
                             "--hidden-dims", "16", "--hkm-branching", "2", "--no-progress",
                             "--models", "hcrl2,hcrl1,vade+hkm,vade+ward,hkm,kmeans+ward",
                             "--tree-settings", '{"elbo_coarsening": 100.0}', "--objective-check"],
    "reproduce.py": ["deepect_aug", "usps", "--scale", "0.0004", "--n", "300", "--set", "hidden_dims=[32]",
                     "--set", "max_leaves=4", "--set", "grow_interval=3", "--no-progress"],
    "hcrl_digits.py": ["--n", "200", "--seeds", "1", "--epochs", "2", "--pretrain-epochs", "1", "--hidden-dims", "16",
                       "--variants", '{"default": {}, "embedding": {"init_tree": "embedding", "init_leaves": 4}}'],
    "digits_defaults.py": ["--n", "200", "--seeds", "1", "--no-progress", "--deepect-settings",
                           '{"pretrain_epochs": 1, "epochs": 2, "hidden_dims": [16], "max_leaves": 4}',
                           "--cohiclust-settings", '{"pretrain_epochs": 1, "epochs": 2, "prune_start": 0, "depth": 2, '
                           '"n_leaves": 3}'],
    "hcrl_mnist.py": ["--n-train", "300", "--n-test", "100", "--epochs", "1", "--pretrain-epochs", "1",
                      "--hidden-dims", "32", "--nll-samples", "3", "--depths", "3", "--seeds", "1", "--no-progress"],
}


def test_every_benchmark_script_has_a_smoke_run():
    assert {p.name for p in (ROOT / "benchmarks").glob("*.py")} == set(SCRIPTS)


#: the data sets each script reads (speed.py draws MNIST-shaped random data; synthetic_tree is drawn)
REQUIRES = {"deepect_mnist.py": {"mnist", "usps"}, "reproduce.py": {"usps"}, "speed.py": set(), "hcrl_digits.py": set(),
            "digits_defaults.py": set(),
            "hierarchy_recovery.py": set(), "hcrl_20newsgroups.py": {"20newsgroups"}}


#: hcrl_20newsgroups.py resumes a stopped run from <out>.rows.jsonl: this row, at the smoke run's budget
PLANTED_20NG_ROW = {"seed": 0, "model": "hkm", "budget": {
    "split": "all", "n": 300, "epochs": 1, "pretrain_epochs": 1, "batch_size": 100, "latent_dim": 10,
    "hidden_dims": "16", "hkm_branching": 2, "hkm_levels": 3}, "hierarchical_f_score": 0.123, "flat_f_score": 0.1,
    "dendrogram_purity": 0.1, "nmi": 0.1, "n_leaves": 8, "seconds": 0.0}


def _missing_data(script: str) -> list[str]:
    return sorted(REQUIRES.get(script, {"mnist"}) - AVAILABLE)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every runnable script's smoke run, all in one interpreter (`_smoke_driver.py`): one import of
    torch and Pyro instead of ten. Returns {script: (report, result file)}."""
    work = tmp_path_factory.mktemp("benchmarks")
    plan, outs = {}, {}
    for script in sorted(SCRIPTS):
        if _missing_data(script):
            continue
        outs[script] = work / f"{script}.json"
        plan[str(ROOT / "benchmarks" / script)] = [*SCRIPTS[script], "--threads", "1", "--out", str(outs[script])]
    if "hcrl_20newsgroups.py" in outs:  # a finished row of a stopped run, to be read back, not refitted
        outs["hcrl_20newsgroups.py"].with_suffix(".rows.jsonl").write_text(json.dumps(PLANTED_20NG_ROW) + "\n")
    (work / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "_smoke_driver.py"), str(work / "plan.json"),
                          str(work / "report.json")], env=env, capture_output=True, text=True, timeout=900,
                         cwd=work)
    assert run.returncode == 0, f"the smoke driver failed ({run.returncode}):\n{run.stderr[-4000:]}"
    report = json.loads((work / "report.json").read_text())
    return {script: (report[str(ROOT / "benchmarks" / script)], outs[script]) for script in outs}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_smoke_run(script, smoke_runs):
    missing = _missing_data(script)
    if missing:
        pytest.skip(f"{', '.join(missing)} not on disk (set PYRO_HC_DATA)")
    status, out = smoke_runs[script]
    assert status["returncode"] == 0, f"{script} failed ({status['returncode']}):\n{status['error']}"
    record = json.loads(out.read_text())
    assert record["device"] in ("cpu", "cuda", "cuda:0")
    assert "metrics" in record or record["results"]
    if script == "hcrl_20newsgroups.py":  # the planted row was read back; the other rows were fitted
        by_model = {row["model"]: row for row in record["results"]}
        assert by_model["hkm"]["hierarchical_f_score"] == PLANTED_20NG_ROW["hierarchical_f_score"]
        assert by_model["kmeans+ward"]["hierarchical_f_score"] != PLANTED_20NG_ROW["hierarchical_f_score"]
        assert {"hcrl2 elbo_coarsening=100.0", "hcrl1 elbo_coarsening=100.0"} <= set(by_model)  # --tree-settings
        own = by_model["hcrl2 elbo_coarsening=100.0"]["own_embedding_hierarchical_f_score"]  # the two-stage trees
        assert set(own) == {"own leaves + Ward", "k-means + Ward", "HKM"} and all(0 < f <= 1 for f in own.values())
        assert "own_embedding_hierarchical_f_score" not in by_model["hkm"]
        elbo = by_model["hcrl2 elbo_coarsening=100.0"]["structure_elbo"]  # --objective-check
        assert set(elbo) == {"own", "k-means + Ward", "true"} and all(np.isfinite(list(elbo.values())))


def test_hcrl_mnist_rescores_the_finished_fits_of_a_run_without_refitting(smoke_runs, tmp_path):
    """``--rescore-from``: the smoke run's HCRL2 fit is read back from its checkpoint and scored again by
    this build's ``predict``; its NLL and RE are copied, not re-estimated."""
    if _missing_data("hcrl_mnist.py"):
        pytest.skip("mnist not on disk (set PYRO_HC_DATA)")
    _, source = smoke_runs["hcrl_mnist.py"]
    out = tmp_path / "rescored.json"
    args = list(SCRIPTS["hcrl_mnist.py"])
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hcrl_mnist.py"), *args, "--models", "hcrl2",
                          "--threads", "1", "--rescore-from", str(source), "--out", str(out)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    before = {row["model"]: row["per_seed"][0] for row in json.loads(source.read_text())["results"]}["hcrl2-L3"]
    after = {row["model"]: row["per_seed"][0] for row in json.loads(out.read_text())["results"]}["hcrl2-L3"]
    assert after["rescored_from"] == str(source)
    assert after["test_nll"] == before["test_nll"] and after["fit_seconds"] == before["fit_seconds"]
    assert after["n_leaves"] == before["n_leaves"] and 0 <= after["acc_at_10_partial"] <= 1
    assert not list(tmp_path.glob("*_work"))  # nothing refitted, no checkpoint folder of its own


def test_the_smoke_driver_reports_a_failing_script(tmp_path):
    """A script that raises is reported with its traceback, and the scripts after it still run."""
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text("import sys\nif __name__ == '__main__':\n    raise ValueError(sys.argv[1])\n")
    good.write_text("import sys, pathlib\nif __name__ == '__main__':\n    pathlib.Path(sys.argv[1]).write_text('ok')\n")
    plan = {str(bad): ["planted"], str(good): [str(tmp_path / "good.txt")]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    subprocess.run([sys.executable, str(ROOT / "tests" / "_smoke_driver.py"), str(tmp_path / "plan.json"),
                    str(tmp_path / "report.json")], check=True, timeout=60)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report[str(bad)]["returncode"] == 1 and "ValueError: planted" in report[str(bad)]["error"]
    assert report[str(good)]["returncode"] == 0 and (tmp_path / "good.txt").read_text() == "ok"


def test_a_benchmark_result_names_its_device_budget_and_versions_next_to_its_table(tmp_path):
    import pyro
    import torch

    from pyro_hc.report import write_benchmark_result

    out = tmp_path / "deep" / "bench.json"
    out.parent.mkdir()
    out.with_suffix(".md").write_text("an older table")  # replaced whole
    record = write_benchmark_result(out, "bench", "cpu", 12.3, {"epochs": 2}, [{"dp": 0.5}], "| dp |\n| 0.5 |")
    assert json.loads(out.read_text()) == record
    assert record["device"] == "cpu" and record["budget"] == {"epochs": 2} and record["results"] == [{"dp": 0.5}]
    assert record["torch"] == torch.__version__ and record["pyro"] == pyro.__version__ and record["cpu_threads"] >= 1
    assert out.with_suffix(".md").read_text() == "device cpu (%d thread(s)), 12 s, budget {'epochs': 2}\n\n| dp |\n| 0.5 |\n" % (
        record["cpu_threads"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.md"]  # no temporary left


def test_a_benchmark_record_replaces_its_files_whole_or_not_at_all(tmp_path):
    """A record is written beside the old one and renamed over it: a reader of the old file keeps the
    old file, and a record JSON cannot encode halfway through leaves both old files as they were."""
    import numpy as np

    from pyro_hc.report import write_record

    out = tmp_path / "deep" / "bench.json"
    write_record(out, {"run": 1, "note": "± 0.1"}, "first table\n")
    assert out.read_text(encoding="utf-8") == '{\n  "run": 1,\n  "note": "± 0.1"\n}'  # indented, not escaped
    with out.open(encoding="utf-8") as reader_of_the_old_file:
        write_record(out, {"run": 2, "dp": np.float32(0.5), "leaves": np.int64(3)}, "second table\n")
        assert json.load(reader_of_the_old_file) == {"run": 1, "note": "± 0.1"}  # renamed over, not rewritten
    assert json.loads(out.read_text()) == {"run": 2, "dp": 0.5, "leaves": 3.0}  # NumPy scalars as floats
    assert out.with_suffix(".md").read_text() == "second table\n"

    rows = [{"seed": seed, "dp": 0.5} for seed in range(5000)]  # encoded, and some of it written, before the failure
    with pytest.raises(TypeError):
        write_record(out, {"rows": rows, "model": object()}, "third table\n")
    assert json.loads(out.read_text()) == {"run": 2, "dp": 0.5, "leaves": 3.0}
    assert out.with_suffix(".md").read_text() == "second table\n"
    write_record(out, {"run": 4})  # without a table only the JSON is replaced
    assert json.loads(out.read_text()) == {"run": 4} and out.with_suffix(".md").read_text() == "second table\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json", "bench.md"]  # no temporary left


def test_the_machine_record_of_a_cpu_run_names_the_processor_threads_and_versions():
    import platform
    import shlex

    import pyro
    import torch

    from pyro_hc.report import machine_record

    record = machine_record(torch.device("cpu"))
    assert set(record) == {"command", "device", "device_name", "processor", "cpu_threads", "torch", "pyro"}
    assert record["device"] == "cpu" and machine_record("cpu") == record
    assert record["device_name"] == (platform.processor() or platform.machine()) and record["device_name"]
    assert record["processor"] == platform.processor() and record["cpu_threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__ and record["pyro"] == pyro.__version__
    assert shlex.split(record["command"]) == ["python", *sys.argv]


def test_result_rows_read_back_the_rows_of_the_same_budget_only(tmp_path):
    from pyro_hc.report import ResultRows

    path = tmp_path / "deep" / "table.rows.jsonl"
    rows = ResultRows(path, {"epochs": 3, "hidden_dims": (16, 8)})
    assert rows.get(0, "hcrl2") is None
    rows.append(0, "hcrl2", {"dp": 0.5})
    rows.append(1, "hcrl2", {"dp": 0.6})
    ResultRows(path, {"epochs": 4, "hidden_dims": (16, 8)}).append(0, "hcrl2", {"dp": 0.9})  # another budget
    again = ResultRows(path, {"epochs": 3, "hidden_dims": [16, 8]})  # a tuple reads back as a list
    assert again.get(0, "hcrl2") == {"dp": 0.5} and again.get(1, "hcrl2") == {"dp": 0.6}
    assert again.get(0, "vade") is None and len(path.read_text().splitlines()) == 3


def _reproduce_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reproduce", module)  # dataclasses look their module up while the class is built
    spec.loader.exec_module(sys.modules["reproduce"])
    return sys.modules["reproduce"]


@pytest.mark.skipif("mnist" not in AVAILABLE, reason="mnist not on disk (set PYRO_HC_DATA)")
def test_reproduce_starts_kdvae_and_kdae_from_one_vade_fitted_once(tmp_path, monkeypatch):
    """k-DVAE's recipe fits the VaDE recipe first (its record written beside), starts from its file and
    records the start's ACC; k-DAE's recipe then reuses that file instead of fitting a second VaDE."""
    import argparse

    import dataclasses

    reproduce = _reproduce_module()
    for name, hidden in (("vade", (32,)), ("kdvae", (16,)), ("kdae", (16,))):  # small networks, same recipes
        recipe = reproduce.RECIPES[(name, "mnist")]
        monkeypatch.setitem(reproduce.RECIPES, (name, "mnist"),
                            dataclasses.replace(recipe, params={**recipe.params, "hidden_dims": hidden}))

    def args_for(recipe):
        return argparse.Namespace(recipe=recipe, dataset="mnist", scale=0.01, set=[], n=200, seed=0, device="cpu",
                                  threads=None, checkpoint_every=1, workdir=str(tmp_path / "work"), progress=False,
                                  out=str(tmp_path / f"{recipe}.json"))

    kdvae = reproduce.run(args_for("kdvae"))
    vade_record = json.loads((tmp_path / "reproduce_vade_mnist_cpu_scale0.01.json").read_text())
    vade_file = Path(vade_record["model_file"])
    assert kdvae["start_from"] == str(vade_file) and vade_file.is_file()
    assert vade_record["budget_epochs"] == {"pretrain": 1, "train": 3}  # 1 % of 50 + 300 epochs, at least one
    first_row = kdvae["results"][0]
    assert first_row["model"] == "kdvae" and 0.0 <= first_row["start_acc"] <= 1.0
    assert len(kdvae["results"]) == 1  # its baselines are the VaDE's, on the VaDE's embedding
    assert {row["model"] for row in vade_record["results"][1:]} == {"vade_embedding_bisecting",
                                                                    "vade_embedding_kmeans_ward"}
    fitted_at = vade_file.stat().st_mtime_ns
    kdae_args = args_for("kdae")
    kdae_args.scale, kdae_args.start_scale = 0.02, 0.01  # a longer k-DAE from the same VaDE
    kdae = reproduce.run(kdae_args)
    assert kdae["start_from"] == str(vade_file) and vade_file.stat().st_mtime_ns == fitted_at
    assert kdae["model_file"] != kdvae["model_file"] and kdae["budget_epochs"] == {"warmup": 1, "train": 2}
    reproduce.write(kdae, tmp_path / "kdae.json")
    assert "start NMI / ACC" in (tmp_path / "kdae.md").read_text()


@pytest.mark.skipif("usps" not in AVAILABLE, reason="usps not on disk (set PYRO_HC_DATA)")
def test_reproduce_deepect_weightings_share_one_autoencoder(tmp_path):
    """``--set reconstruction=sum`` and the recipe's "mean" pretrain one autoencoder, once, trained on
    the per-feature mean; each main phase then weighs L_rec its own way."""
    import argparse

    reproduce = _reproduce_module()

    def args_for(weighting):
        return argparse.Namespace(recipe="deepect", dataset="usps", scale=0.0004, n=300, seed=0, device="cpu",
                                  set=["hidden_dims=[16]", "max_leaves=3", "grow_interval=1",
                                       f"reconstruction=\"{weighting}\""],
                                  threads=None, checkpoint_every=1, workdir=str(tmp_path / "work"), progress=False,
                                  out=str(tmp_path / f"{weighting}.json"))

    mean = reproduce.run(args_for("mean"))
    pretrained = sorted((tmp_path / "work").glob("pretrained-*.pt"))
    assert len(pretrained) == 1 and pyro_hc.models.load(pretrained[0]).reconstruction == "mean"
    written = pretrained[0].stat().st_mtime_ns
    total = reproduce.run(args_for("sum"))
    assert sorted((tmp_path / "work").glob("pretrained-*.pt")) == pretrained
    assert pretrained[0].stat().st_mtime_ns == written  # reused, not trained again
    assert mean["model_file"] != total["model_file"]
    assert pyro_hc.models.load(total["model_file"]).reconstruction == "sum"
    assert pyro_hc.models.load(mean["model_file"]).reconstruction == "mean"

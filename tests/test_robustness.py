"""Issue 18, one test (or a few) per numbered item: nothing a user made is lost, no silent wrong
results, settings checked before work starts, clear errors, and the scikit-learn conventions."""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone

import pyro_hc
from pyro_hc import cli
from pyro_hc.cli import main
from pyro_hc.estimator import InvalidSettingError, NotFittedError
from pyro_hc.infer import Callback, DivergenceError, ModelFileError, SVIEngine

from .robust_configs import TINY
from .test_data import _fake_mnist

REPO = Path(__file__).resolve().parents[1]
CLI_TINY = ["--set", "latent_dim=2", "--set", "hidden_dims=[8]", "--set", "pretrain_epochs=1", "--epochs", "1",
            "--set", "n_clusters=3", "--no-progress"]


@pytest.fixture(scope="module")
def small():
    torch.set_num_threads(1)
    return pyro_hc.load_dataset("digits", n_samples=120)


class InterruptAt(Callback):
    """Raise KeyboardInterrupt in ``phase`` at ``epoch`` (0-based), at the first step of that epoch."""

    def __init__(self, phase: str, epoch: int) -> None:
        self.phase, self.epoch = phase, epoch

    def on_step_end(self, state) -> None:
        if state.engine.phase == self.phase and state.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture
def interrupt(monkeypatch):
    """``interrupt(phase, epoch)`` makes every engine built afterwards raise KeyboardInterrupt there."""
    original = SVIEngine.__init__
    where: dict = {}

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if where:
            self.callbacks.insert(0, InterruptAt(**where))

    monkeypatch.setattr(SVIEngine, "__init__", patched)

    def arm(phase: str | None, epoch: int = 0) -> None:
        where.clear()
        if phase is not None:
            where.update(phase=phase, epoch=epoch)

    return arm


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. run folders ------------------------------------------------------------------------------------


def test_fit_refuses_a_folder_holding_files_and_overwrite_replaces_only_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vade", *CLI_TINY, "--out", str(out)]) == 0
    (out / "plots").mkdir()
    (out / "plots" / "tree.png").write_bytes(b"old picture")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["fit", "vae", *CLI_TINY[:4], "--epochs", "1", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--overwrite" in err and "Traceback" not in err
    assert _snapshot(out) == before, "a refused run must not touch the folder"
    assert main(["fit", "vae", *CLI_TINY[:4], "--epochs", "1", "--no-progress", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"] == "vae"
    assert not (out / "plots").exists(), "the old run's pictures go with it"
    assert (out / "notes.txt").read_text() == "mine", "files that are not a run's are kept"
    assert pyro_hc.load(out / "model.pt").name == "vae"


def test_default_run_folders_are_unique_when_runs_start_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20260101-000000")  # the same second for all
    parser = cli._build_parser()
    claimed, errors = [], []

    def claim() -> None:
        try:
            args = parser.parse_args(["fit", "vade"])
            claimed.append(cli._claim_folder(args)[0])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(claimed)) == 8


@pytest.mark.slow  # two processes importing torch: a minute on a busy 2-core machine
def test_two_cli_fits_started_at_once_write_two_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pyro_hc.cli", "fit", "vade", *CLI_TINY]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    saved = [line for out, _ in outputs for line in out.splitlines() if line.startswith("saved to")]
    assert len(set(saved)) == 2, saved
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all((f / "model.pt").is_file() for f in folders)


def test_ctrl_c_into_a_used_folder_leaves_no_old_model_and_resumes(tmp_path, capsys, interrupt):
    out = tmp_path / "run"
    assert main(["fit", "vae", *CLI_TINY[:4], "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    argv = ["fit", "vade", *CLI_TINY[:6], "--epochs", "2", "--no-progress", "--out", str(out), "--overwrite"]
    interrupt("train", 1)
    capsys.readouterr()
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"], "the old vae run is gone, not mixed in"
    resume = shlex.split(err.split("Resume with:")[1].strip())
    assert resume[0] == "pyro-hc" and "--resume" in resume and "--overwrite" not in resume
    interrupt(None)
    assert main(resume[1:]) == 0
    resumed = pyro_hc.load(out / "model.pt")
    reference = tmp_path / "reference"
    assert main([a if a != str(out) else str(reference) for a in argv if a != "--overwrite"]) == 0
    expected = pyro_hc.load(reference / "model.pt")
    for key, value in expected.module_.state_dict().items():
        assert torch.equal(value, resumed.module_.state_dict()[key]), key
    assert not (out / "checkpoint.pt").exists(), "a finished run drops its every-epoch checkpoint"


# 2. the data cache ----------------------------------------------------------------------------------


def test_data_cache_is_keyed_by_source_and_never_replaced_by_a_corrupt_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_HC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PYRO_HC_DATA", raising=False)
    a = _fake_mnist(tmp_path / "a" / "mnist", seed=0)
    b = _fake_mnist(tmp_path / "b" / "mnist", seed=1)
    labels = {"a": a["train-labels-idx1-ubyte"].tolist(), "b": b["train-labels-idx1-ubyte"].tolist()}
    for root in ("a", "b", "a"):
        got = pyro_hc.load_dataset("mnist", root=tmp_path / root, split="train").y.tolist()
        assert got == labels[root], f"root {root} was served another root's data"
    with pytest.raises(FileNotFoundError):
        pyro_hc.load_dataset("mnist", root=tmp_path / "mistyped", split="train")
    (tmp_path / "empty" / "mnist").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        pyro_hc.load_dataset("mnist", root=tmp_path / "empty", split="train")
    cached = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*-ubyte")}
    # a corrupt source: truncated inside the gzip stream, then a truncated IDX payload
    source = tmp_path / "a" / "mnist" / "train-images-idx3-ubyte.gz"
    whole = source.read_bytes()
    source.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is damaged or truncated"):
        pyro_hc.load_dataset("mnist", root=tmp_path / "a", split="train")
    with gzip.open(source, "wb") as handle:
        handle.write(gzip.decompress(whole)[:-100])
    with pytest.raises(ValueError, match="damaged or truncated"):
        pyro_hc.load_dataset("mnist", root=tmp_path / "a", split="train")
    assert {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*-ubyte")} == cached
    assert pyro_hc.load_dataset("mnist", root=tmp_path / "b", split="train").y.tolist() == labels["b"]


# 3. save after a changed setting --------------------------------------------------------------------


def test_save_after_a_changed_setting_writes_the_fitted_configuration(small, tmp_path):
    model = pyro_hc.get_model("vade", **TINY["vade"]).fit(small, progress=False)
    expected = model.predict(small)
    model.n_clusters = 7
    restored = pyro_hc.load(model.save(tmp_path / "m.pt"))
    assert restored.n_clusters == 3 and torch.equal(restored.predict(small), expected)


# 4. damaged files -----------------------------------------------------------------------------------


def test_every_damaged_model_file_is_named_as_such(small, tmp_path, capsys):
    model = pyro_hc.get_model("vade", **TINY["vade"]).fit(small, progress=False)
    path = model.save(tmp_path / "m.pt")
    data = path.read_bytes()
    cases = {"empty": b"", "text": b"model.pt: see the README\n", "truncated": data[: len(data) // 3],
             "foreign": bytes(range(256)) * 4}
    for offset in (0.3, 0.5, 0.9):  # damaged blocks inside the weights
        block = bytearray(data)
        start = int(len(data) * offset)
        block[start:start + 64] = bytes(64)
        cases[f"damaged-{offset}"] = bytes(block)
    for name, content in cases.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(content)
        with pytest.raises(ModelFileError) as info:
            pyro_hc.load(bad)
        assert info.value.reason == name.split("-")[0] and str(bad) in str(info.value)
    assert torch.equal(pyro_hc.load(path).predict(small), model.predict(small))
    run = tmp_path / "run"
    assert main(["fit", "vade", *CLI_TINY, "--out", str(run)]) == 0
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:1000])
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "Traceback" not in err


def _writers(folder: Path) -> dict:
    """Every file pyro_hc replaces, as ``name: (write(version), read() -> version)`` on one file in ``folder``:
    a checkpoint, a saved tree, a data-cache copy (with its stamp) and a CLI run record."""
    from pyro_hc import data as data_module
    from pyro_hc.infer import checkpoint as ck
    from pyro_hc.tree import ClusterTree

    def checkpoint(version):
        ck.save_checkpoint(folder / "c.pt", {"a": torch.full((3,), float(version))})

    trees = []
    for size in range(5):
        trees.append(ClusterTree())
        for _ in range(size + 1):
            trees[-1].add_child(trees[-1].root)

    def tree(version):
        trees[version % 5].save(folder / "tree.json")

    source = folder.parent / "source.bin"  # outside the folder whose listing the tests check

    def cache(version):
        source.write_bytes(bytes([version % 256]) * 1000)
        os.utime(source, ns=(version + 1, version + 1))  # a new stamp record every time
        data_module._materialise(source, folder / "copy.bin")

    def record(version):
        cli._write_text(folder / "metrics.json", json.dumps({"version": version}))

    return {
        "checkpoint": (checkpoint, lambda: int(ck.load_checkpoint(folder / "c.pt")["a"][0])),
        "tree": (tree, lambda: len(ClusterTree.load(folder / "tree.json"))),
        "cache": (cache, lambda: (folder / "copy.bin").read_bytes()[0]
                  + 0 * len(json.loads((folder / "copy.bin.source.json").read_text()))),
        "record": (record, lambda: json.loads((folder / "metrics.json").read_text())["version"]),
    }


WRITERS = ["checkpoint", "tree", "cache", "record"]


@pytest.mark.parametrize("writer", WRITERS)
def test_files_are_replaced_atomically(tmp_path, monkeypatch, writer):
    from pyro_hc import _files

    folder = tmp_path / "files"
    folder.mkdir()
    write, read = _writers(folder)[writer]
    write(1)
    files, good = sorted(p.name for p in folder.iterdir()), read()

    def interrupted_write(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_files.os, "replace", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        write(2)
    assert read() == good and sorted(p.name for p in folder.iterdir()) == files


@pytest.mark.parametrize("writer", WRITERS)
def test_a_ctrl_c_between_any_two_lines_of_a_write_leaves_no_temporary(tmp_path, writer):
    """A signal raises KeyboardInterrupt at whatever line runs when it lands: raise it at each line
    event of the write in turn (the writer's own lines and those of the standard library it calls,
    ``tempfile`` included, where a stray ``.tmp`` once came from) and check that the folder holds the
    old file or the new one, intact, and nothing else. Every writer of the package goes through
    ``pyro_hc._files.atomic_write``; before it, the data caches used ``tempfile.mkstemp`` and a saved
    tree was written in place."""
    from pyro_hc import _files
    from pyro_hc import data as data_module
    from pyro_hc import tree as tree_module
    from pyro_hc.infer import checkpoint as ck

    folder = tmp_path / "files"
    folder.mkdir()
    write, read = _writers(folder)[writer]
    write(1)
    files = sorted(p.name for p in folder.iterdir())
    import genericpath
    import pathlib
    import posixpath
    import secrets
    import shutil
    import tempfile

    # the file system's modules of the standard library (not json's encoder, which runs before any write)
    library = {Path(m.__file__).resolve() for m in (_files, ck, data_module, tree_module, cli, os, genericpath,
                                                       pathlib, posixpath, secrets, shutil, tempfile, gzip)}

    known: dict[str, bool] = {}

    def traced(filename: str) -> bool:
        if filename not in known:
            known[filename] = Path(filename).resolve() in library
        return known[filename]

    interrupted_at = 0
    for target in range(10_000):
        seen = 0

        def tracer(frame, event, arg):
            nonlocal seen
            if not traced(frame.f_code.co_filename):
                return None
            if event == "line":
                seen += 1
                if seen == target:
                    raise KeyboardInterrupt
            return tracer

        sys.settrace(tracer)
        try:
            write(target + 2)
            finished = True
        except KeyboardInterrupt:
            finished = False
            interrupted_at += 1
        finally:
            sys.settrace(None)
        assert sorted(p.name for p in folder.iterdir()) == files, f"interrupt at line event {target}"
        read()  # the old file or the new one, intact
        if finished and target > seen:  # this target lay past the write's last line: every line was tried
            break
    assert interrupted_at > 20  # the write's own lines and those of os / pathlib were all interrupted


# 5. transactional fits ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hcrl2", "vade"])
def test_a_diverging_refit_keeps_the_previous_fit(small, name):
    model = pyro_hc.get_model(name, **TINY[name]).fit(small, progress=False)
    proba, info, labels = model.predict_proba(small), model.fit_info_, model.predict(small)
    model.lr, model.pretrain_epochs = 1e4, 0
    # VaDE's candidates are warmed up ("select") at that learning rate before the main phase ("train")
    with pytest.raises(DivergenceError, match=r"(select|train): .*epoch \d+, step \d+.*learning rate"):
        model.fit(small, epochs=20, progress=False)
    assert model.fit_info_ is info and torch.equal(model.predict(small), labels)
    assert torch.equal(model.predict_proba(small), proba) and bool(torch.isfinite(proba).all())


def test_an_interrupted_refit_keeps_the_previous_fit_and_a_first_fit_stays_unfitted(small, interrupt):
    model = pyro_hc.get_model("vade", **TINY["vade"]).fit(small, progress=False)
    proba = model.predict_proba(small)
    interrupt("train", 1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(small, seed=5, progress=False)
    assert torch.equal(model.predict_proba(small), proba) and model.fit_info_["seed"] == 0
    fresh = pyro_hc.get_model("vade", **TINY["vade"])
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(small, progress=False)
    with pytest.raises(NotFittedError):
        fresh.predict(small)
    assert not [k for k in vars(fresh) if k.endswith("_")]


# 6. divergence: the engine's own check ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["vae", "kdae", "hcrl2"])
def test_a_huge_learning_rate_stops_with_phase_epoch_and_step(small, name):
    model = pyro_hc.get_model(name, **{**TINY[name], "epochs": 30, "lr": 50.0})
    # VaDE's candidates are warmed up ("select") at that learning rate before the main phase ("train")
    with pytest.raises(DivergenceError, match=r"(select|train): .*epoch \d+, step \d+.*learning rate"):
        model.fit(small, progress=False)


# 7. shapes, truncation, settings that do nothing -----------------------------------------------------


def test_cohiclust_refuses_images_of_another_shape(small):
    model = pyro_hc.get_model("cohiclust", **{**TINY["cohiclust"], "pretrain_epochs": 0, "epochs": 1})
    model.fit(small, progress=False)
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\)"):
        model.predict(small.x.reshape(len(small), 1, 4, 16))
    with pytest.raises(ValueError, match="flat data"):
        pyro_hc.get_model("vae", **TINY["vae"]).fit(small.flat(), progress=False).predict(small.x)


@pytest.mark.parametrize("setting, value", [("epochs", 2.7), ("batch_size", 64.9), ("n_clusters", True),
                                            ("n_clusters", "5"), ("lr", float("nan")), ("hidden_dims", 5)])
def test_settings_are_not_truncated_or_coerced(small, setting, value):
    with pytest.raises(InvalidSettingError, match=setting) as info:
        pyro_hc.get_model("vade", **{**TINY["vade"], setting: value}).fit(small, progress=False)
    assert info.value.setting == setting and isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidSettingError, match="n_leaves"):
        pyro_hc.get_model("cohiclust", **{**TINY["cohiclust"], "n_leaves": True}).fit(small, progress=False)
    if setting in ("epochs", "batch_size"):
        with pytest.raises(InvalidSettingError, match=setting):
            pyro_hc.get_model("vade", **TINY["vade"]).fit(small, progress=False, **{setting: value})


def test_cuda_graphs_and_amp_on_a_cpu_warn_and_are_recorded_off(small):
    model = pyro_hc.get_model("cohiclust", **{**TINY["cohiclust"], "pretrain_epochs": 0, "epochs": 1, "amp": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(small, progress=False, device="cpu", cuda_graphs=True)
    messages = " ".join(str(w.message) for w in caught)
    assert "cuda_graphs=True does nothing on cpu" in messages and "amp=True does nothing on cpu" in messages
    assert model.fit_info_["cuda_graphs"] is False and model.fit_info_["amp"] is False


# 8. GROW at capacity ----------------------------------------------------------------------------------


def test_grow_at_capacity_warns_and_skips(small):
    model = pyro_hc.get_model("hcrl1", **{**TINY["hcrl1"], "capacity": 4, "epochs": 6, "structure": "paper"})  # GROW
    with pytest.warns(RuntimeWarning, match="capacity of 4 nodes"):
        model.fit(small, progress=False)
    assert len(model.tree) <= 4 and not [e for e in model.tree.events if e["kind"] == "grow" and not e["nodes"]]


# 9. every setting checked before any work ------------------------------------------------------------


@pytest.mark.parametrize("name, bad", [("vade", {"lr": 0}), ("hcrl2", {"merge_threshold": 2.0}),
                                       ("kdvae", {"vade_lr": -1.0}), ("deepect", {"pretrained": "nowhere.pt"}),
                                       ("hcrl1", {"lr_decay": 0.0}), ("vae", {"likelihood": "poisson"})])
def test_a_bad_setting_fails_at_once_naming_it(small, name, bad):
    budget = {k: 10_000 for k in TINY[name] if k.endswith("epochs")}  # would take minutes if work started
    model = pyro_hc.get_model(name, **{**TINY[name], **budget, **bad})
    started = time.perf_counter()
    with pytest.raises((ValueError, FileNotFoundError), match=next(iter(bad))):
        model.fit(small, progress=False)
    assert time.perf_counter() - started < 1.0


def test_cli_bad_setting_fails_before_any_folder_is_made(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vade", *CLI_TINY, "--set", "lr=0", "--set", "pretrain_epochs=10000", "--out", str(out)]) == 2
    assert "lr must be" in capsys.readouterr().err and not out.exists()


# 10. the command line: no tracebacks, --set by declared type ----------------------------------------


def test_set_values_are_read_by_the_declared_type(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "hcrl2", *CLI_TINY[:6], "--set", "lr=.001", "--set", "level_concentration=0.5,1,2",
                 "--set", "max_leaves=none", "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["lr"] == 0.001 and config["level_concentration"] == [0.5, 1.0, 2.0] and config["max_leaves"] is None
    model = pyro_hc.load(out / "model.pt")
    assert isinstance(model.lr, float) and model.hidden_dims == (8,)


@pytest.mark.parametrize("argv, message", [
    (["fit", "vade", "--set", "n_clusters=abc"], "n_clusters takes an integer"),
    (["fit", "vade", "--set", "n_clusters=5.0"], "n_clusters takes an integer"),
    (["fit", "vade", "--set", "hidden_dims=a,b"], "hidden_dims takes a list of integers"),
    (["fit", "vade", *CLI_TINY, "--set", "lr=1e4", "--set", "pretrain_epochs=0", "--epochs", "30"], "diverged"),
])
def test_common_cli_mistakes_end_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_out_file_and_foreign_run_records(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["fit", "vade", *CLI_TINY, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    for text in ("not json", '{"unrelated": 1}', "[1, 2]"):
        run = tmp_path / "foreign"
        run.mkdir(exist_ok=True)
        (run / "metrics.json").write_text(text)
        for command in ("evaluate", "plot"):
            assert main([command, str(run)]) == 2
            assert "not a pyro-hc run record" in capsys.readouterr().err


def test_ctrl_c_in_the_cli_prints_no_traceback(tmp_path, capsys, interrupt):
    interrupt("pretrain", 0)  # before any epoch ended: nothing to resume, no folder left
    out = tmp_path / "run"
    assert main(["fit", "vade", *CLI_TINY, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and not out.exists()


def test_api_string_setting_names_the_setting(small):
    with pytest.raises(InvalidSettingError, match=r"n_clusters must be an integer, got '5'"):
        pyro_hc.get_model("vade", n_clusters="5").fit(small, progress=False)


# 11. reconstruction error and likelihoods the models do not have -------------------------------------


def test_reconstruction_error_and_nll_say_when_a_model_has_none(small):
    cohiclust = pyro_hc.get_model("cohiclust", **{**TINY["cohiclust"], "pretrain_epochs": 0, "epochs": 1})
    with pytest.raises(TypeError, match="no decoder"):
        cohiclust.fit(small, progress=False).reconstruction_error(small)
    kdae = pyro_hc.get_model("kdae", **TINY["kdae"]).fit(small, progress=False)
    with pytest.raises(TypeError, match="not a density model"):
        kdae.negative_log_likelihood(small, num_samples=2)
    assert np.isfinite(kdae.reconstruction_error(small))


# conventions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
def test_sklearn_clone_set_params_fit_predict_labels(small, name):
    model = pyro_hc.get_model(name, **TINY[name])
    twin = clone(model)
    assert type(twin) is type(model) and twin.get_params(deep=True) == model.get_params(deep=False)
    assert twin.set_params(batch_size=16) is twin and twin.batch_size == 16 and model.batch_size == 32
    with pytest.raises(InvalidSettingError, match="unknown setting"):
        twin.set_params(n_clusterz=3)
    labels = model.fit_predict(small, progress=False)
    assert torch.equal(labels, model.labels_) and torch.equal(labels, model.predict(small))
    assert set(labels.tolist()) <= set(model.tree.leaves())


def test_help_and_list_do_not_import_torch():
    code = ("import sys, time; t = time.perf_counter(); from pyro_hc.cli import main; "
            "main(['list']); assert 'torch' not in sys.modules, 'torch was imported'; "
            "print(time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.splitlines()[-1]) < 1.0
    done = subprocess.run([sys.executable, "-c", "import sys, pyro_hc.cli as c\n"
                           "try:\n c.main(['fit', '--help'])\nexcept SystemExit: pass\n"
                           "assert 'torch' not in sys.modules"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--overwrite" in done.stdout, done.stderr


def test_the_catalog_matches_the_registries():
    from pyro_hc import _catalog

    assert tuple(pyro_hc.list_models()) == _catalog.MODELS
    assert tuple(pyro_hc.list_datasets()) == _catalog.DATASETS


def test_arviz_is_pinned_to_a_range_the_installed_version_satisfies():
    import tomllib

    import arviz
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (spec,) = [Requirement(d) for d in project["dependencies"] if d.startswith("arviz")]
    assert spec.specifier and "1.0" not in spec.specifier and spec.specifier.contains(arviz.__version__)

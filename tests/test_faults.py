"""Fault injection for every registered model (issue 18): interrupts and divergence in every phase.

Every training phase of every model is interrupted by a ``KeyboardInterrupt`` raised from a
callback (at the start of the phase, inside an epoch, at an epoch's end), and made to diverge (its
parameters set to NaN mid-epoch). Afterwards:

- the estimator is in the fitted state it had before the failed call (or unfitted);
- nothing on disk is half-written: the checkpoint folder holds the checkpoint file only, and it
  verifies and loads;
- a fit resumed from that checkpoint ends exactly where the uninterrupted fit with the same seed
  does (parameters, tree, labels);

and a ``pyro-hc fit`` stopped by SIGINT prints how to resume, and resumes to the same model.
Budgets are tiny (:mod:`tests.robust_configs`), so the file runs in about a minute on one thread.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyro_hc
from pyro_hc.cli import main
from pyro_hc.infer import Callback, DivergenceError, SVIEngine, load_checkpoint

from .robust_configs import TINY

REPO = Path(__file__).resolve().parents[1]
SEED = 3


@pytest.fixture(scope="module")
def small():
    torch.set_num_threads(1)
    return pyro_hc.load_dataset("digits", n_samples=64)


class Fault(Callback):
    """At the ``hook`` of epoch ``epoch`` of the ``engine``-th engine built in the fit: interrupt or poison."""

    def __init__(self, hook: str, epoch: int, kind: str) -> None:
        self.hook, self.epoch, self.kind = hook, epoch, kind

    def _fire(self, state) -> None:
        if state.epoch != self.epoch:
            return
        if self.kind == "interrupt":
            raise KeyboardInterrupt
        with torch.no_grad():  # divergence: every parameter of the phase's module becomes NaN
            for p in state.engine.module.parameters():
                p.fill_(float("nan"))

    def on_fit_start(self, state) -> None:
        if self.hook == "fit_start":
            self._fire(state)

    def on_step_end(self, state) -> None:
        if self.hook == "step":
            self._fire(state)

    def on_epoch_end(self, state) -> None:
        if self.hook == "epoch_end":
            self._fire(state)


class _EpochCounter(Callback):
    def __init__(self, counts: list[int], index: int) -> None:
        self.counts, self.index = counts, index

    def on_epoch_end(self, state) -> None:
        self.counts[self.index] += 1


class Injector:
    """Counts the engines a fit builds (and their epochs) and gives the chosen one a :class:`Fault`."""

    def __init__(self) -> None:
        self.target: tuple[int, Fault] | None = None
        self.phases: list[str] = []
        self.epochs: list[int] = []

    def install(self, monkeypatch) -> None:
        original = SVIEngine.__init__
        injector = self

        def patched(engine, *args, **kwargs):
            original(engine, *args, **kwargs)
            injector.phases.append(engine.phase)
            injector.epochs.append(0)
            engine.callbacks.append(_EpochCounter(injector.epochs, len(injector.epochs) - 1))
            if injector.target is not None and injector.target[0] == len(injector.phases) - 1:
                # last, so that the callbacks' states a checkpoint saves (one per callback, in order)
                # line up with those of the resumed fit, which has no fault
                engine.callbacks.append(injector.target[1])

        monkeypatch.setattr(SVIEngine, "__init__", patched)

    def arm(self, engine: int | None, fault: Fault | None = None) -> None:
        self.phases, self.epochs = [], []
        self.target = None if engine is None else (engine, fault)


@pytest.fixture
def injector(monkeypatch):
    injector = Injector()
    injector.install(monkeypatch)
    return injector


_REFERENCES: dict[str, tuple] = {}


def _reference(name: str, small, injector: Injector):
    """The uninterrupted fit with SEED (state dict, phases it ran, labels), computed once per model."""
    if name not in _REFERENCES:
        injector.arm(None)
        model = pyro_hc.get_model(name, **TINY[name]).fit(small, progress=False, seed=SEED)
        _REFERENCES[name] = ({k: v.clone() for k, v in model.module_.state_dict().items()}, list(injector.phases),
                             model.labels_.clone(), model.tree.to_json(), list(injector.epochs))
    return _REFERENCES[name]


def _same_state(model, reference: dict) -> bool:
    state = model.module_.state_dict()
    return state.keys() == reference.keys() and all(torch.equal(state[k], v) for k, v in reference.items())


def _previous_fit(name: str, small):
    """A model fitted with another seed: the state an interrupted refit must leave untouched."""
    model = pyro_hc.get_model(name, **TINY[name]).fit(small, progress=False, seed=SEED + 1)
    return model, {k: v.clone() for k, v in model.module_.state_dict().items()}, model.fit_info_, model.labels_


@pytest.mark.parametrize("name", sorted(TINY))
def test_interrupts_in_every_phase_keep_the_model_and_resume_to_the_same_fit(name, small, injector, tmp_path):
    expected, phases, labels, tree, epochs = _reference(name, small, injector)
    points = [(0, "fit_start", 0)]
    for engine in range(len(phases)):  # inside the last epoch, and at the end of the first
        points += [(engine, "step", epochs[engine] - 1), (engine, "epoch_end", 0)]
    points.append((len(phases) - 1, "fit_start", 0))
    model, before, info, before_labels = _previous_fit(name, small)
    for engine, hook, epoch in points:
        folder = tmp_path / f"{engine}-{hook}-{epoch}"
        injector.arm(engine, Fault(hook, epoch, "interrupt"))
        with pytest.raises(KeyboardInterrupt):
            model.fit(small, progress=False, seed=SEED, checkpoint=folder / "ck.pt")
        where = f"{name}: interrupted in {phases[engine]} (engine {engine}) at {hook} of epoch {epoch}"
        assert _same_state(model, before) and model.fit_info_ is info and model.labels_ is before_labels, where
        written = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        assert written in ([], ["ck.pt"]), f"{where}: left {written}"
        injector.arm(None)
        resumed = pyro_hc.get_model(name, **TINY[name])
        # no checkpoint only when no epoch of a checkpointing phase had ended: faults in the first phase's
        # start or first epoch, or in the phases of k-DVAE's initialising VaDE (a fit of its own)
        first = 2 if name in ("kdvae", "kdae") else 0
        early = engine < first or engine == first and (hook == "fit_start" or (hook, epoch) == ("epoch_end", 0))
        assert (not written) == early, f"{where}: wrote {written}"
        if not written:
            with pytest.raises(FileNotFoundError):
                resumed.fit(small, progress=False, seed=SEED, checkpoint=folder / "ck.pt", resume=True)
            continue
        assert "resume" in load_checkpoint(folder / "ck.pt")  # verifies the checksum
        assert pyro_hc.load(folder / "ck.pt").name == name  # a checkpoint also loads as a model
        resumed.fit(small, progress=False, seed=SEED, checkpoint=folder / "ck.pt", resume=True)
        assert _same_state(resumed, expected), f"{where}: the resumed fit differs from the uninterrupted one"
        assert torch.equal(resumed.labels_, labels) and resumed.tree.to_json() == tree, where
    # the interrupted refits left the model usable as before
    assert torch.equal(model.predict(small), before_labels)


@pytest.mark.parametrize("name", sorted(TINY))
def test_divergence_in_every_phase_names_it_and_keeps_the_model(name, small, injector, tmp_path):
    phases = _reference(name, small, injector)[1]
    model, before, info, _ = _previous_fit(name, small)
    for engine, phase in enumerate(phases):
        injector.arm(engine, Fault("step", 0, "diverge"))
        with pytest.raises(DivergenceError) as raised:
            model.fit(small, progress=False, seed=SEED, checkpoint=tmp_path / f"{engine}.pt")
        message = str(raised.value)
        assert message.startswith(f"{phase}:") and "epoch 0" in message and "step" in message, message
        assert "learning rate" in message, message
        assert _same_state(model, before) and model.fit_info_ is info, f"{name} {phase}: the failed fit changed it"
        assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    injector.arm(None)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"no {path.name} appeared (rc {process.returncode}): {err[-2000:]}")
        time.sleep(0.05)


@pytest.mark.slow  # a CLI process (torch import) and two in-process fits of 32 epochs: ~20 s, more on a busy machine
def test_sigint_to_a_cli_fit_leaves_a_checkpoint_that_resumes_to_the_same_model(tmp_path):
    out, reference = tmp_path / "run", tmp_path / "reference"
    argv = ["fit", "vade", "--set", "latent_dim=2", "--set", "hidden_dims=[8]", "--set", "n_clusters=3",
            "--set", "pretrain_epochs=2", "--epochs", "30", "--batch-size", "64", "--seed", str(SEED), "--split", "test",
            "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # the child must take SIGINT as a user's Ctrl-C: a disposition inherited from this process (where an
    # earlier test or library may have left SIGINT ignored) would make it run to the end instead
    process = subprocess.Popen([sys.executable, "-m", "pyro_hc.cli", *argv], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(out / "checkpoint.pt", process, timeout=240)  # the first epoch has ended
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Resume with:" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"], "no half-written or stale files"
    resume = shlex.split(err.split("Resume with:")[1].strip())
    assert resume[0] == "pyro-hc" and resume[-1] == "--resume"
    torch.set_num_threads(1)
    assert main(resume[1:]) == 0
    assert main([a if a != str(out) else str(reference) for a in argv]) == 0
    resumed, expected = pyro_hc.load(out / "model.pt"), pyro_hc.load(reference / "model.pt")
    assert resumed.fit_info_.get("resumed_from") and not expected.fit_info_.get("resumed_from")
    for key, value in expected.module_.state_dict().items():
        assert torch.equal(value, resumed.module_.state_dict()[key]), key


#: VaDE choosing its start among 2 autoencoders x 2 GMMs by the ELBO after a 2-epoch warm-up: phases
#: pretrain, select, select, pretrain, select, select, train (one step an epoch, to keep the test short)
VADE_SELECTING = {**TINY["vade"], "init_candidates": 2, "autoencoder_candidates": 2, "selection_epochs": 2,
                  "batch_size": 64}


def _history(model) -> list[dict]:
    return [dict(r) for r in model.history_.records]


def test_vade_interrupted_inside_its_candidate_selection_resumes_to_the_same_fit(small, injector, tmp_path):
    """Interrupted while choosing its start, VaDE resumes to the same fit, bit for bit.

    Parameters, the whole history (the chosen autoencoder's pretraining epochs, the ``init`` record
    with every candidate's scores, the main phase's epochs, all monitored) and the predictions. The
    points cover a checkpoint inside a warm-up with a candidate already scored, one at the end of
    the first autoencoder's last warm-up (its candidate not scored yet), inside and at the end of
    the second autoencoder's pretraining, and inside the main phase; the every-model test above
    covers the ends of the first autoencoder's warm-ups and the start of the main phase.
    """
    injector.arm(None)
    fit = dict(progress=False, seed=SEED, monitor_labels=small.y)  # monitored: ACC / NMI records resume too
    reference = pyro_hc.get_model("vade", **VADE_SELECTING).fit(small, **fit)
    phases = list(injector.phases)
    assert phases == ["pretrain", "select", "select", "pretrain", "select", "select", "train"], phases
    expected, history = {k: v.clone() for k, v in reference.module_.state_dict().items()}, _history(reference)
    init = next(r for r in history if r["phase"] == "init")
    assert len(init["candidates"]) == 4 and len({c["score"] for c in init["candidates"]}) == 4
    assert "acc_after_warmup" in init["candidates"][3] and "acc" in history[-1]  # the last epoch is scored
    # (engine, hook, epoch): a fault at ("epoch_end", 0) resumes from the end of the engine before
    points = [(2, "step", 1), (3, "epoch_end", 0), (3, "step", 1), (4, "epoch_end", 0), (5, "step", 1),
              (6, "step", 1)]
    for engine, hook, epoch in points:
        where = f"interrupted in {phases[engine]} (engine {engine}) at {hook} of epoch {epoch}"
        checkpoint = tmp_path / f"{engine}-{hook}.pt"
        injector.arm(engine, Fault(hook, epoch, "interrupt"))
        with pytest.raises(KeyboardInterrupt):
            pyro_hc.get_model("vade", **VADE_SELECTING).fit(small, checkpoint=checkpoint, **fit)
        injector.arm(None)
        resumed = pyro_hc.get_model("vade", **VADE_SELECTING).fit(small, checkpoint=checkpoint, resume=True, **fit)
        assert _same_state(resumed, expected), f"{where}: the resumed parameters differ"
        assert _history(resumed) == history, f"{where}: the resumed history differs"
        assert torch.equal(resumed.labels_, reference.labels_), where
        assert torch.equal(resumed.predict_proba(small), reference.predict_proba(small)), where

"""Every tutorial notebook runs top to bottom (tiny budgets); the committed copy shows a full run.

The notebooks read ``PYRO_HC_SMOKE=1`` and shrink every budget, so each runs in seconds. They are
executed by nbclient in a real Jupyter kernel, started with *this* interpreter: the test writes a
``python3`` kernel spec whose command is ``sys.executable`` into a temporary ``JUPYTER_PATH``
folder, which Jupyter searches before the user's and the system's kernel folders, so a
``python3`` kernel registered elsewhere (another Python, another virtual environment) is never
picked up. Should ``ipykernel`` be missing, the code cells are run in-process with ``exec`` in one
namespace instead (IPython magics are not supported there; the notebooks use none).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_there_are_tutorials():
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_shows_a_clean_full_run(path):
    """A committed notebook carries the output of one full run, in order and without errors (or,
    before its first full run, no output at all) — never a smoke run's."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert any(cell.cell_type == "markdown" for cell in nb.cells), f"{path.name} has no markdown"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.get("execution_count") for cell in code]
    if all(c is None for c in counts) and not any(cell.get("outputs") for cell in code):
        return
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: cells were not run once, top to bottom: {counts}"
    outputs = [out for cell in code for out in cell.get("outputs", [])]
    errors = [out.get("ename") for out in outputs if out.get("output_type") == "error"]
    assert not errors, f"{path.name}: the committed run raised {errors}"
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert "smoke run" not in text, f"{path.name}: the committed outputs come from a smoke run"


def _kernel_spec_dir(root: Path) -> Path:
    """A ``python3`` kernel spec that launches ipykernel with this very interpreter."""
    folder = root / "kernels" / "python3"
    folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pyro_hc tests)",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return root


def _run_with_kernel(nb, cwd: Path) -> None:
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError naming the cell and the traceback


def _run_in_process(nb, cwd: Path, name: str) -> None:
    namespace = {"__name__": "__main__"}
    with _chdir(cwd):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                exec(compile(cell.source, f"<{name} cell {index}>", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"cell {index} failed:\n{cell.source}") from error
    import matplotlib.pyplot as plt

    plt.close("all")


@contextlib.contextmanager
def _chdir(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_HC_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel shares the CPU with the test runner
    nb = nbformat.read(path, as_version=4)
    if importlib.util.find_spec("ipykernel") is not None and importlib.util.find_spec("nbclient") is not None:
        monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec_dir(tmp_path / "jupyter")))
        monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files
        monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile or startup scripts
        _run_with_kernel(nb, path.parent)
    else:
        _run_in_process(nb, path.parent, path.name)

"""`make demo`: its recipe is valid for its model, and the command prints the tree beside the baseline."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

from pyro_hc.cli import main
from pyro_hc.models import get_model_class, list_models

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def demo_args() -> list[str]:
    """The Makefile's DEMO_ARGS, continuation lines joined."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^DEMO_ARGS \?=(.*)$", text, flags=re.MULTILINE)
    assert match, "the Makefile defines no DEMO_ARGS"
    return shlex.split(match.group(1))


def test_demo_recipe_names_a_tree_model_and_only_its_own_settings():
    args = demo_args()
    assert args[0] in list_models() and "--epochs" in args and "--seed" in args
    settings = dict(args[k + 1].split("=", 1) for k, arg in enumerate(args) if arg == "--set")
    assert set(settings) <= set(get_model_class(args[0])._param_names()), settings
    assert int(settings["n_leaves"]) >= 8  # the acceptance: a tree of at least 8 leaves
    assert "make demo" in (MAKEFILE.parent / "README.md").read_text()


def test_demo_command_prints_tree_baseline_and_picture(tmp_path, capsys):
    # the demo's command with a tiny budget (later options win): shows every part of the report works
    tiny = ["--epochs", "1", "--set", "pretrain_epochs=1", "--set", "depth=2", "--set", "n_leaves=4",
            "--split", "test", "--no-progress", "--baseline", "--plot-tree", "--out", str(tmp_path / "demo")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(["fit", *demo_args(), *tiny]) == 0
    printed = capsys.readouterr().out
    assert "tree: 7 nodes, 4 leaves, depth 2; 359 points" in printed
    assert re.search(r"dendrogram purity with 4 leaves: cohiclust 0\.\d{4} \| k-means \+ Ward on the raw features "
                     r"0\.\d{4} \| difference [+-]0\.\d{4}", printed)
    assert (tmp_path / "demo" / "tree.png").is_file() and "saved to" in printed

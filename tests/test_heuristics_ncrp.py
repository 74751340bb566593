"""HCRL's GROW / PRUNE / MERGE callback (Algorithm 1) on a real ClusterTree and a fake model.

The fake model's ``path_responsibilities`` is chosen by each test.  Column 0 of the data holds
the datum's index, so a responsibility function can give every datum its own row.
"""

from __future__ import annotations

from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroParam

from pyro_hc.heuristics import NCRPHeuristics, NCRPTreeModel
from pyro_hc.infer import FitState, SVIEngine, local_params
from pyro_hc.models._plate import data_plate
from pyro_hc.tree import ClusterTree


# ---------------------------------------------------------------------- fakes and helpers
class FakeNCRP(PyroModule):
    """An NCRPTreeModel whose responsibilities come from ``resp_fn(ids, tree)``."""

    def __init__(self, tree: ClusterTree, resp_fn):
        super().__init__()
        self.mu = PyroParam(torch.zeros(2))
        self.tree = tree
        self.resp_fn = resp_fn
        self.depth = tree.depth()
        self.calls: list[tuple] = []

    def model(self, x, index=None, num_data=None):
        with data_plate(x, index, num_data):
            pyro.sample("x", dist.Normal(self.mu, 1.0).to_event(1), obs=torch.zeros_like(x))

    def guide(self, x, index=None, num_data=None):
        pass

    def path_responsibilities(self, x):
        return self.resp_fn(x[:, 0].long(), self.tree)

    def grow(self, node):
        self.calls.append(("grow", node))
        new, current = [], node
        while self.tree.level(current) < self.depth:
            current = self.tree.add_child(current)
            new.append(current)
        return new

    def prune(self, leaf):
        self.calls.append(("prune", leaf))
        return self.tree.remove_leaf(leaf, prune_empty_parents=True)

    def merge(self, keep_leaf, drop_leaf):
        self.calls.append(("merge", keep_leaf, drop_leaf))
        return self.tree.remove_leaf(drop_leaf, prune_empty_parents=True)


def make_fake(edges, resp_fn) -> FakeNCRP:
    """A fake over the tree with the given (parent, child) edges, added in order."""
    tree = ClusterTree()
    for parent, child in edges:
        assert tree.add_child(parent) == child
    with local_params():
        return FakeNCRP(tree, resp_fn)


def columns(tree: ClusterTree) -> list[tuple[int, ...]]:
    return tree.paths() + tree.inner_paths()


def constant(weights: dict[int, float]):
    """Every datum puts ``weights[node]`` on the path ending at ``node`` (others 0)."""

    def resp_fn(ids, tree):
        row = torch.tensor([float(weights.get(path[-1], 0.0)) for path in columns(tree)])
        row = row / row.sum()
        return row.expand(len(ids), -1).clone()

    return resp_fn


def per_datum(table: dict[int, torch.Tensor]):
    """Datum ``n`` puts ``table[node][n]`` on the path ending at ``node`` (rows normalised)."""

    def resp_fn(ids, tree):
        cols = [table[path[-1]][ids] if path[-1] in table else torch.zeros(len(ids)) for path in columns(tree)]
        resp = torch.stack(cols, 1)
        return resp / resp.sum(1, keepdim=True)

    return resp_fn


def data(n: int) -> torch.Tensor:
    return torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], 1)


class Driver:
    """Calls the callback's hooks like SVIEngine.fit does (shuffled batches, global step)."""

    def __init__(self, callback, module, n=40, batch_size=10, seed=0):
        self.callback, self.module = callback, module
        self.x = data(n)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = self.step = 0
        self.logs: list[dict] = []

    def run_epoch(self) -> dict:
        state = FitState(
            engine=SimpleNamespace(module=self.module), epoch=self.epoch, step=self.step,
            num_data=len(self.x),
        )
        self.callback.on_epoch_start(state)
        for index in torch.randperm(len(self.x), generator=self.generator).split(self.batch_size):
            self.step += 1
            state.step, state.batch_index, state.batch_x = self.step, index, self.x[index]
            self.callback.on_step_end(state)
        state.batch_index = state.batch_x = None
        self.callback.on_epoch_end(state)
        self.epoch += 1
        self.logs.append(dict(state.logs))
        return state.logs

    def run(self, epochs: int) -> list[dict]:
        return [self.run_epoch() for _ in range(epochs)]


def column(logs: list[dict], key: str) -> list:
    return [entry.get(key) for entry in logs]


def assert_full_depth(tree: ClusterTree, depth: int) -> None:
    tree.check()
    assert all(len(path) == depth + 1 for path in tree.paths()), tree.paths()


# a depth-2 tree: 0 -> {1 -> {2, 3}, 4 -> {5}}
TWO_BRANCHES = [(0, 1), (1, 2), (1, 3), (0, 4), (4, 5)]


# ---------------------------------------------------------------------- configuration
def test_defaults_are_stored():
    cb = NCRPHeuristics(seed=3)
    assert (cb.grow_every, cb.lock_epochs, cb.prune_threshold, cb.merge_threshold) == (1, 5, 0.01, 0.95)
    assert cb.max_leaves is None and cb.seed == 3 and cb.lock_counter == 0
    assert cb.enabled_moves == {"grow", "prune", "merge"}
    assert NCRPHeuristics(enabled_moves="grow").enabled_moves == {"grow"}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(grow_every=0), dict(grow_every=1.5), dict(lock_epochs=-1), dict(prune_threshold=-0.1),
        dict(prune_threshold=1.5), dict(merge_threshold=0.0), dict(merge_threshold=1.01),
        dict(max_leaves=0), dict(seed="a"), dict(enabled_moves=("grow", "split")),
        dict(prune_threshold="x"),
    ],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        NCRPHeuristics(**kwargs)


def test_fake_satisfies_the_protocol():
    assert isinstance(make_fake([(0, 1)], constant({1: 1.0})), NCRPTreeModel)
    assert not isinstance(torch.nn.Linear(2, 2), NCRPTreeModel)


# ---------------------------------------------------------------------- GROW
@pytest.mark.parametrize("inner_node, new_nodes", [(1, [3]), (0, [3, 4])])
def test_grow_branches_under_the_inner_path_that_holds_the_mass(inner_node, new_nodes):
    module = make_fake([(0, 1), (1, 2)], constant({inner_node: 1.0}))
    driver = Driver(NCRPHeuristics(lock_epochs=100, seed=0), module)
    logs = driver.run_epoch()
    assert module.calls == [("grow", inner_node)]
    assert module.tree.children(inner_node)[-1] == new_nodes[0]
    assert_full_depth(module.tree, 2)
    (event,) = module.tree.events
    assert event == dict(kind="grow", nodes=new_nodes, epoch=0, step=4, parent=inner_node)
    assert logs["grew"] == 1.0 and logs["n_paths"] == 2.0 and logs["lock_counter"] == 0.0


def test_nothing_grows_when_the_mass_sits_on_full_paths():
    module = make_fake(TWO_BRANCHES, constant({2: 1.0, 3: 1.0, 5: 1.0}))
    driver = Driver(NCRPHeuristics(lock_epochs=100, seed=0), module)
    version = module.tree.version
    driver.run(5)
    assert module.tree.version == version and module.calls == [] and module.tree.events == []
    assert column(driver.logs, "grew") == [0.0] * 5
    assert column(driver.logs, "lock_counter") == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_grow_samples_in_proportion_to_the_mass():
    # half the mass on the root's inner path: about half the epochs grow, none under node 1
    module = make_fake([(0, 1), (1, 2)], constant({2: 1.0, 0: 1.0}))
    driver = Driver(NCRPHeuristics(lock_epochs=1000, seed=0), module)
    driver.run(40)
    grown = sum(column(driver.logs, "grew"))
    assert 10 <= grown <= 30
    assert {call[1] for call in module.calls} == {0}


def test_grow_every_and_max_leaves():
    module = make_fake([(0, 1), (1, 2)], constant({1: 1.0}))
    driver = Driver(NCRPHeuristics(grow_every=3, lock_epochs=1000, max_leaves=3, seed=0), module)
    driver.run(12)
    assert column(driver.logs, "grew") == [0, 0, 1, 0, 0, 1] + [0] * 6  # epochs 3 and 6 (1-based)
    assert len(module.tree.leaves()) == 3
    assert [e["epoch"] for e in module.tree.events] == [2, 5]


# ---------------------------------------------------------------------- PRUNE
def test_a_path_without_mass_is_pruned_with_its_childless_parent():
    module = make_fake(TWO_BRANCHES, constant({2: 1.0, 3: 1.0}))
    driver = Driver(NCRPHeuristics(lock_epochs=0, seed=0), module)
    logs = driver.run_epoch()
    assert module.calls == [("prune", 5)]
    assert module.tree.nodes() == [0, 1, 2, 3]
    assert_full_depth(module.tree, 2)
    (event,) = module.tree.events
    assert event == dict(kind="prune", nodes=[5, 4], epoch=0, step=4, leaf=5, share=0.0)
    assert logs["pruned"] == 1.0 and logs["merged"] == 0.0 and logs["n_paths"] == 2.0


def test_a_pruned_leaf_with_siblings_leaves_its_parent():
    module = make_fake(TWO_BRANCHES, constant({2: 1.0, 5: 1.0}))
    Driver(NCRPHeuristics(lock_epochs=0, seed=0), module).run_epoch()
    assert module.tree.nodes() == [0, 1, 2, 4, 5]
    assert module.tree.events[0]["nodes"] == [3]


@pytest.mark.parametrize("threshold, pruned", [(0.025, False), (0.035, True)])
def test_prune_threshold_is_a_share_of_all_the_mass(threshold, pruned):
    # leaf 5 holds 3% of the mass (counting the inner path's mass in the denominator)
    module = make_fake(TWO_BRANCHES, constant({2: 0.47, 3: 0.2, 1: 0.3, 5: 0.03}))
    driver = Driver(NCRPHeuristics(lock_epochs=0, prune_threshold=threshold, seed=0,
                                   enabled_moves=("prune",)), module)
    logs = driver.run_epoch()
    assert logs["pruned"] == float(pruned)
    assert (5 in module.tree) is not pruned
    if pruned:
        assert module.tree.events[0]["share"] == pytest.approx(0.03)


def test_the_last_full_path_is_never_pruned():
    # all the mass on the root's inner path: every full path is "minor"
    module = make_fake([(0, 1), (1, 2), (1, 3)], constant({0: 1.0}))
    driver = Driver(NCRPHeuristics(lock_epochs=0, prune_threshold=0.5, seed=0,
                                   enabled_moves=("prune", "merge")), module)
    driver.run(5)
    assert column(driver.logs, "pruned") == [1, 0, 0, 0, 0]
    assert len(module.tree.leaves()) == 1
    assert_full_depth(module.tree, 2)


def test_prune_chooses_at_random_among_the_minor_paths():
    first_pruned = set()
    for seed in range(8):
        module = make_fake([(0, leaf) for leaf in range(1, 6)], constant({1: 1.0}))
        Driver(NCRPHeuristics(lock_epochs=0, seed=seed), module).run_epoch()
        (call,) = module.calls
        assert call[0] == "prune" and call[1] in {2, 3, 4, 5}
        first_pruned.add(call[1])
    assert len(first_pruned) >= 2


# ---------------------------------------------------------------------- MERGE
def merge_table(n: int, noise: float = 0.0) -> dict[int, torch.Tensor]:
    """Leaves 2 and 3 have proportional columns (3 is twice as heavy); leaf 5 differs."""
    w = (torch.arange(n) % 2).float()
    jitter = noise * (torch.arange(n) % 3 == 0).float()
    return {2: 0.2 * w, 3: 0.4 * w + jitter, 5: 1.0 - 0.6 * w}


def test_identical_responsibility_columns_are_merged_into_the_heavier_path():
    module = make_fake(TWO_BRANCHES, per_datum(merge_table(40)))
    driver = Driver(NCRPHeuristics(lock_epochs=0, seed=0), module)
    logs = driver.run_epoch()
    assert module.calls == [("merge", 3, 2)]
    assert module.tree.nodes() == [0, 1, 3, 4, 5]
    (event,) = module.tree.events
    assert event["kind"] == "merge" and event["nodes"] == [2]
    assert (event["keep"], event["drop"], event["epoch"], event["step"]) == (3, 2, 0, 4)
    assert event["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert logs["merged"] == 1.0 and logs["max_similarity"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("threshold, merged", [(0.99, False), (0.8, True)])
def test_merge_needs_the_similarity_threshold(threshold, merged):
    module = make_fake(TWO_BRANCHES, per_datum(merge_table(40, noise=0.3)))
    driver = Driver(NCRPHeuristics(lock_epochs=0, merge_threshold=threshold, seed=0), module)
    logs = driver.run_epoch()
    assert 0.8 < logs["max_similarity"] < 0.99
    assert logs["merged"] == float(merged)
    assert (2 in module.tree) is not merged


def test_the_most_similar_pair_is_merged():
    # leaves 2 & 5 identical, 2 & 3 similar: both above the threshold, 2 & 5 wins
    n = 40
    w = (torch.arange(n) % 2).float()
    table = {2: 0.3 * w, 5: 0.3 * w, 3: 0.3 * w + 0.05 * (1 - w), 4: 0.1 + 0 * w}
    module = make_fake(TWO_BRANCHES, per_datum(table))
    driver = Driver(NCRPHeuristics(lock_epochs=0, merge_threshold=0.5, prune_threshold=0.0,
                                   enabled_moves=("merge",), seed=0), module)
    driver.run_epoch()
    assert module.calls[0][0] == "merge" and set(module.calls[0][1:]) == {2, 5}


def test_responsibilities_are_stored_at_the_batch_rows():
    n = 37
    table = {leaf: torch.rand(n, generator=torch.Generator().manual_seed(leaf)) for leaf in (2, 3, 5, 1)}
    resp_fn = per_datum(table)
    module = make_fake(TWO_BRANCHES, resp_fn)
    driver = Driver(NCRPHeuristics(lock_epochs=1000, enabled_moves=("prune", "merge")), module,
                    n=n, batch_size=8)
    driver.run_epoch()
    expected = resp_fn(torch.arange(n), module.tree)
    cb = driver.callback
    torch.testing.assert_close(cb.responsibilities, expected[:, :3])
    torch.testing.assert_close(cb.path_mass, expected.sum(0))


def test_prune_comes_before_merge():
    table = merge_table(40)
    table = {2: table[2], 3: table[3], 5: table[5], 6: torch.zeros(40)}
    module = make_fake(TWO_BRANCHES + [(4, 6)], per_datum(table))
    driver = Driver(NCRPHeuristics(lock_epochs=0, seed=0), module)
    driver.run(2)
    assert [call[0] for call in module.calls] == ["prune", "merge"]
    assert column(driver.logs, "pruned") == [1, 0] and column(driver.logs, "merged") == [0, 1]


# ---------------------------------------------------------------------- the lock
def test_nothing_is_pruned_or_merged_during_the_lock():
    table = merge_table(40)
    table = {2: table[2], 3: table[3], 5: table[5], 6: torch.zeros(40), 7: torch.zeros(40)}
    module = make_fake(TWO_BRANCHES + [(4, 6), (4, 7)], per_datum(table))
    driver = Driver(NCRPHeuristics(lock_epochs=3, seed=0), module)
    driver.run(12)
    assert column(driver.logs, "pruned") == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert column(driver.logs, "merged") == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert column(driver.logs, "lock_counter") == [1, 2, 3, 0] * 3
    assert [e["epoch"] for e in module.tree.events] == [3, 7, 11]


@pytest.mark.parametrize("lock_epochs, pruned", [(0, [1, 0, 1, 0]), (1, [0, 0, 0, 0])])
def test_growing_restarts_the_lock(lock_epochs, pruned):
    # every full path is minor, but GROW (every 2nd epoch, always under the root) resets t
    module = make_fake([(0, 1), (1, 2), (1, 3), (0, 4), (4, 5)], constant({0: 1.0}))
    driver = Driver(NCRPHeuristics(grow_every=2, lock_epochs=lock_epochs, prune_threshold=0.5,
                                   seed=0), module)
    driver.run(4)
    assert column(driver.logs, "grew") == [0, 1, 0, 1]
    assert column(driver.logs, "pruned") == pruned


# ---------------------------------------------------------------------- with the real engine
def test_runs_inside_svi_engine_and_logs_into_the_history():
    module = make_fake([(0, 1), (1, 2)], constant({1: 1.0}))
    cb = NCRPHeuristics(lock_epochs=100, seed=0)
    engine = SVIEngine(module, callbacks=[cb], progress=False)
    history = engine.fit(data(40), epochs=3, batch_size=10, seed=0)
    assert history["grew"] == [1.0, 1.0, 1.0]
    assert history["n_paths"] == [2.0, 3.0, 4.0] == [float(n) for n in history["n_leaves"]]
    events = module.tree.events
    assert [(e["kind"], e["epoch"], e["step"]) for e in events] == [
        ("grow", 0, 4), ("grow", 1, 8), ("grow", 2, 12)
    ]
    assert_full_depth(module.tree, 2)


# ---------------------------------------------------------------------- random sequences
def random_resp_fn(n: int, seed: int):
    """Per-datum responsibilities that depend on node ids: some pairs of leaves have equal
    columns (MERGE), some leaves almost none (PRUNE), inner paths some mass (GROW)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 64, generator=g) ** 3

    def resp_fn(ids, tree):
        cols = []
        for path in tree.paths():
            leaf = path[-1]
            scale = 1e-4 if leaf % 5 == 4 else 1.0
            cols.append(scale * base[ids, leaf // 2])
        for path in tree.inner_paths():
            cols.append(0.05 * base[ids, 32 + path[-1] % 32])
        resp = torch.stack(cols, 1)
        return resp / resp.sum(1, keepdim=True)

    return resp_fn


def random_run(seed: int, epochs: int = 60):
    edges = [(0, 1), (1, 2), (1, 3), (0, 4), (4, 5)]
    module = make_fake(edges, random_resp_fn(30, seed=1))
    cb = NCRPHeuristics(grow_every=2, lock_epochs=1, prune_threshold=0.02, merge_threshold=0.97,
                        max_leaves=8, seed=seed)
    driver = Driver(cb, module, n=30, batch_size=7, seed=0)
    for _ in range(epochs):
        driver.run_epoch()
        assert_full_depth(module.tree, 2)
        assert 1 <= len(module.tree.leaves()) <= 8
    return module, driver


def test_a_random_sequence_keeps_the_tree_valid():
    module, driver = random_run(seed=0)
    kinds = [event["kind"] for event in module.tree.events]
    assert {"grow", "prune", "merge"} <= set(kinds), kinds
    for entry in driver.logs:
        assert entry["grew"] + entry["pruned"] + entry["merged"] <= 1
        assert not (entry["grew"] and entry["pruned"])
    assert len(kinds) == sum(e["grew"] + e["pruned"] + e["merged"] for e in driver.logs)
    ClusterTree.from_json(module.tree.to_json()).check()


def test_same_seed_same_decisions():
    first, _ = random_run(seed=5, epochs=30)
    second, _ = random_run(seed=5, epochs=30)
    other, _ = random_run(seed=6, epochs=30)
    assert first.tree.events == second.tree.events and first.tree.paths() == second.tree.paths()
    assert first.calls == second.calls
    assert other.calls != first.calls


def test_state_dict_resumes_the_same_decisions():
    module, driver = random_run(seed=2, epochs=10)
    saved_tree, saved = module.tree.copy(), driver.callback.state_dict()
    saved_batches, saved_counts = driver.generator.get_state(), (driver.epoch, driver.step)
    module.calls = []
    driver.run(20)
    continued = module.calls
    assert continued  # something happened after epoch 10, so the comparison below means something

    module.tree, module.calls = saved_tree, []
    driver.callback = NCRPHeuristics(grow_every=2, lock_epochs=1, prune_threshold=0.02,
                                     merge_threshold=0.97, max_leaves=8, seed=99)
    driver.callback.load_state_dict(saved)
    driver.generator.set_state(saved_batches)
    driver.epoch, driver.step = saved_counts
    driver.run(20)
    assert module.calls == continued


# ---------------------------------------------------------------------- misuse
def test_wrong_shape_rows_and_mid_epoch_edits_raise():
    module = make_fake(TWO_BRANCHES, lambda ids, tree: torch.full((len(ids), 2), 0.5))
    with pytest.raises(ValueError, match="shape"):
        Driver(NCRPHeuristics(), module).run_epoch()

    module = make_fake(TWO_BRANCHES, lambda ids, tree: torch.full((len(ids), 6), 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        Driver(NCRPHeuristics(), module).run_epoch()

    edits = []

    def editing(ids, tree):  # answers for the current tree, then edits it mid-epoch
        resp = constant({2: 1.0})(ids, tree)
        if not edits:
            edits.append(tree.add_child(5))
        return resp

    module = make_fake(TWO_BRANCHES, editing)
    with pytest.raises(RuntimeError, match="changed during the epoch"):
        Driver(NCRPHeuristics(), module).run_epoch()

    state = FitState(engine=SimpleNamespace(module=torch.nn.Linear(2, 2)), num_data=4)
    state.batch_x, state.batch_index = torch.zeros(4, 2), torch.arange(4)
    with pytest.raises(TypeError, match="NCRPTreeModel"):
        NCRPHeuristics().on_step_end(state)


def test_a_move_that_does_not_edit_the_tree_is_reported():
    module = make_fake([(0, 1), (1, 2)], constant({1: 1.0}))
    module.grow = lambda node: [99]
    with pytest.raises(RuntimeError, match="without changing the tree"):
        Driver(NCRPHeuristics(seed=0), module).run_epoch()

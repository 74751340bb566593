"""The SVI engine: batching, schedules, callbacks, NaN errors and checkpoints that restore the tree."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroParam

from pyro_hc.infer import (
    Callback, CheckpointEvery, NonFiniteLossError, SVIEngine, load_checkpoint, local_params, resolve_device,
)
from pyro_hc.models._plate import data_plate
from pyro_hc.tree import ClusterTree


class GaussianMean(PyroModule):
    """x_n ~ Normal(mu, 1) with a point-estimated mu: the ELBO optimum is the sample mean."""

    def __init__(self):
        super().__init__()
        self.mu = PyroParam(torch.zeros(2))
        self.tree = ClusterTree.flat(2)

    def model(self, x, index=None, num_data=None):
        with data_plate(x, index, num_data):
            pyro.sample("x", dist.Normal(self.mu, 1.0).to_event(1), obs=x)

    def guide(self, x, index=None, num_data=None):
        pass


def make_module():
    with local_params():
        return GaussianMean()


def test_engine_recovers_the_sample_mean():
    torch.manual_seed(0)
    x = torch.randn(500, 2) + torch.tensor([3.0, -1.0])
    module = make_module()
    engine = SVIEngine(module, lr=0.05, progress=False)
    history = engine.fit(x, epochs=30, batch_size=50, seed=0)
    assert torch.allclose(module.mu.detach(), x.mean(0), atol=0.05)
    assert len(history) == 30 and history["loss"][-1] < history["loss"][0]
    assert engine.step_count == 30 * 10


def test_history_answers_membership_and_refuses_to_be_iterated_by_position():
    from pyro_hc.infer.callbacks import History

    history = History([{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.0, "grew": 1.0}])
    assert "loss" in history and "grew" in history and "missing" not in history  # used to loop forever
    assert history.keys() == ["epoch", "loss", "grew"]
    assert history["grew"] == [None, 1.0] and len(history) == 2
    with pytest.raises(TypeError, match="strings"):
        list(history)


def test_learning_rate_schedule_steps_per_epoch():
    engine = SVIEngine(make_module(), lr=0.1, lr_decay=0.5, lr_decay_every=2, progress=False)
    engine.fit(torch.randn(20, 2), epochs=4, batch_size=10)
    assert engine.history["lr"] == pytest.approx([0.1, 0.05, 0.05, 0.025])


def test_callbacks_see_every_step_and_can_stop():
    seen = {"steps": 0, "epochs": 0, "batch_sizes": set()}

    class Counter(Callback):
        def on_step_end(self, state):
            seen["steps"] += 1
            seen["batch_sizes"].add(len(state.batch_index))

        def on_epoch_end(self, state):
            seen["epochs"] += 1
            state.logs["custom"] = 1.0
            state.stop = state.epoch == 2

    engine = SVIEngine(make_module(), callbacks=[Counter()], progress=False)
    engine.fit(torch.randn(25, 2), epochs=10, batch_size=10)
    assert seen == {"steps": 9, "epochs": 3, "batch_sizes": {10, 5}}
    assert engine.history["custom"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("n, drop_last, sizes", [(25, True, [10, 10]), (25, False, [10, 10, 5]),
                                                 (7, True, [7])])  # less than a batch: still one batch
def test_drop_last_skips_the_short_batch_of_every_epoch(n, drop_last, sizes):
    sizes_seen = []

    class Sizes(Callback):
        def on_step_end(self, state):
            sizes_seen.append(len(state.batch_index))

    engine = SVIEngine(make_module(), callbacks=[Sizes()], progress=False, drop_last=drop_last)
    engine.fit(torch.randn(n, 2), epochs=2, batch_size=10, seed=0)
    assert sizes_seen == sizes * 2


def test_nan_loss_names_epoch_and_step():
    x = torch.randn(40, 2)
    x[33] = 1e30  # squared in the Normal log density: an infinite loss in some batch of epoch 0
    engine = SVIEngine(make_module(), progress=False, check_every=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step [1-4]\b"):
        engine.fit(x, epochs=2, batch_size=10, seed=0)


def test_nan_step_is_exact():
    module = make_module()
    engine = SVIEngine(module, progress=False, check_every=100)
    x = torch.randn(30, 2)
    engine.fit(x, epochs=1, batch_size=10, seed=0)  # 3 good steps
    with torch.no_grad():
        module.mu_unconstrained.fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 4\b"):
        engine.fit(x, epochs=1, batch_size=10, seed=0)


def test_checkpoint_restores_parameters_optimizer_and_tree(tmp_path):
    x = torch.randn(60, 2)
    module = make_module()
    engine = SVIEngine(module, lr=0.05, progress=False, callbacks=[CheckpointEvery(tmp_path / "ck.pt")])
    engine.fit(x, epochs=2, batch_size=20, seed=0)
    new_leaf = module.tree.add_child(1)
    module.tree.log_event("grow", [new_leaf], epoch=2)
    engine.save_checkpoint(tmp_path / "ck.pt")

    restored = make_module()
    other = SVIEngine(restored, lr=0.05, progress=False)
    other.load_checkpoint(tmp_path / "ck.pt")
    assert torch.equal(restored.mu.detach(), module.mu.detach())
    assert restored.tree.to_json() == module.tree.to_json()
    assert restored.tree.events[-1]["kind"] == "grow"
    assert other.epoch == 2 and other.step_count == engine.step_count
    assert other.history.records == engine.history.records
    # the restored optimiser continues exactly as the original would
    engine.fit(x, epochs=1, batch_size=20, seed=7)
    other.fit(x, epochs=1, batch_size=20, seed=7)
    assert torch.allclose(restored.mu.detach(), module.mu.detach())
    assert "optimizer" in load_checkpoint(tmp_path / "ck.pt")


def test_engine_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown optimizer"):
        SVIEngine(make_module(), optimizer="sgd")
    with pytest.raises(ValueError, match="unknown loss"):
        SVIEngine(make_module(), loss="elbo")
    with pytest.raises(ValueError, match="lr"):
        SVIEngine(make_module(), lr=-1.0)
    with pytest.raises(TypeError, match="no model"):
        SVIEngine(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        SVIEngine(make_module(), progress=False).fit(torch.randn(4, 2), epochs=1, batch_size=0)


def test_clipped_adam_trains():
    x = torch.randn(100, 2) + 2.0
    module = make_module()
    SVIEngine(module, optimizer="clipped_adam", lr=0.05, progress=False).fit(x, epochs=40, batch_size=50)
    assert torch.allclose(module.mu.detach(), x.mean(0), atol=0.1)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_trains_on_gpu():
    x = (torch.randn(200, 2) + 1.0).cuda()
    module = make_module().cuda()
    SVIEngine(module, lr=0.05, progress=False).fit(x, epochs=20, batch_size=50)
    assert module.mu.device.type == "cuda"
    assert torch.allclose(module.mu.detach().cpu(), x.mean(0).cpu(), atol=0.1)


def test_lr_multipliers_make_parameter_groups():
    module = make_module()
    engine = SVIEngine(module, lr=0.01, lr_multipliers={"mu": 10.0}, progress=False)
    (group,) = engine.optimizer.param_groups
    assert group["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="positive"):
        SVIEngine(make_module(), lr_multipliers={"mu": 0.0})


def test_nan_parameter_before_the_first_step_is_reported():
    module = make_module()
    with torch.no_grad():
        module.mu_unconstrained.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"mu_unconstrained.*epoch 0, step 1\b"):
        SVIEngine(module, progress=False).fit(torch.randn(10, 2), epochs=1, batch_size=5)


@pytest.mark.parametrize("name,loss", [("vae", "trace"), ("vade", "trace_enum"), ("hcrl2", "trace_enum")])
def test_device_elbos_equal_pyros_value_and_gradient(name, loss):
    """The host-sync-free ELBOs return Pyro's loss value and gradient for the same random draws."""
    import pyro
    from pyro.infer import Trace_ELBO, TraceEnum_ELBO

    import pyro_hc
    from pyro_hc.estimator import DataSpec
    from pyro_hc.infer import local_params, make_elbo

    config = {"vae": dict(latent_dim=3, hidden_dims=(8,)), "vade": dict(n_clusters=3, latent_dim=3, hidden_dims=(8,)),
              "hcrl2": dict(depth=3, latent_dim=3, hidden_dims=(8,), capacity=8)}[name]
    estimator = pyro_hc.get_model(name, **config)
    estimator.data_spec_ = DataSpec(6, None, "bernoulli")
    with local_params():
        module = estimator._new_module()
        if name == "hcrl2":
            module.grow(module.tree.root)  # two full paths and an inner one at each internal node
        x = torch.rand(5, 6).bernoulli()
        index = torch.arange(5)
        reference = (Trace_ELBO if loss == "trace" else TraceEnum_ELBO)(max_plate_nesting=1)
        results = []
        for elbo in (reference, make_elbo(loss)):
            pyro.set_rng_seed(3)
            module.zero_grad(set_to_none=True)
            value = elbo.differentiable_loss(module.model, module.guide, x, index, 40)
            value.backward()
            results.append((value.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]))
    (ref_value, ref_grads), (value, grads) = results
    assert type(make_elbo(loss)).__name__.startswith("Device")
    assert torch.allclose(value, ref_value, rtol=1e-5)
    assert len(grads) == len(ref_grads) > 0
    for g, ref in zip(grads, ref_grads):
        assert torch.allclose(g, ref, rtol=1e-4, atol=1e-6)

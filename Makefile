# pyro_hc developer commands. `make demo` and `make test` are the README's quick start.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair this project is tested with (pip takes them from the local disk here).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

# Offline data sets live beside the checkout on the project's machines.
ifneq ($(wildcard ../shared/data),)
export PYRO_HC_DATA ?= $(abspath ../shared/data)
endif
export MPLBACKEND ?= Agg

.PHONY: install install-test demo test benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo's whole recipe is spelled out here, so that retuning a model's defaults cannot change it:
# CoHiClust (small CNN, depth-4 tree pruned to 10 leaves, 10 SimCLR + 30 tree epochs) measured best of the
# zoo's tree models on digits within a two-minute CPU budget (README, "Quick start").
DEMO_ARGS ?= cohiclust --dataset digits --seed 0 --epochs 30 --batch-size 128 \
	--set backbone=small_cnn --set depth=4 --set n_leaves=10 --set 'crop_scale=[0.7,1.0]' \
	--set pretrain_epochs=10 --set lr=0.003 --set prune_start=10

# One thread unless OMP_NUM_THREADS says otherwise (as tutorial 04 runs the small CNN): on the shared
# 2-core machine the demo took 38 s of CPU on one thread, and two threads had burnt 253 s of CPU in
# 14 minutes without finishing.
demo: $(VENV)/.installed  ## train CoHiClust on the bundled digits; print its metrics, its tree and k-means + Ward beside it
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pyro-hc fit $(DEMO_ARGS) --baseline --plot-tree --overwrite --out runs/demo

# Two pytest workers at one torch thread each (tests/conftest.py): the suite's tests are mostly small
# fits, which one thread runs as fast as two, so two workers halve the wall time on a 2-core machine.
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test  ## the whole test suite (CI runs exactly this)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

benchmark: $(VENV)/.installed  ## VaDE on full MNIST (see benchmarks/README.md for budgets)
	$(PY) benchmarks/vade_mnist.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

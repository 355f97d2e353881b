# Two entry points for a fresh machine (see README): `make quickstart` and `make test`.
# Both create an isolated environment in .venv, install tx-suite with its dev extra, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# pytest-xdist workers: the suite is mostly single-threaded Python (CLI subprocesses, small models),
# so two workers on a 2-core machine take ~0.55x the serial time. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 2
# W&B: offline unless the caller says otherwise (no API key needed; `wandb sync` uploads later).
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install quickstart test clean distclean
# A failed install (e.g. the torch/torchvision check) removes the stamp pip already wrote, so the
# next `make` installs again instead of running on a broken environment.
.DELETE_ON_ERROR:

# The stamp is the console script pip writes; pyproject.toml changes trigger a reinstall.
$(BIN)/tx-suite: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "tx-suite needs Python >= 3.10, got " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# torch and torchvision must be a matching pair (torchvision's C++ ops are built for one torch).
	$(BIN)/python -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5); print('installed torch', torch.__version__, '+ torchvision', torchvision.__version__)"
	@touch $@

install: $(BIN)/tx-suite

# Train the CPU quickstart translation model on bundled Multi30k (de->en), then score test_2016_flickr.
quickstart: install
	$(BIN)/tx-suite fit --config experiments/translation/multi30k_de_en_quickstart.yaml
	$(BIN)/tx-suite test --config experiments/translation/multi30k_de_en_quickstart.yaml --ckpt_path last

test: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Generated output only; `distclean` also removes the environment.
clean:
	rm -rf runs wandb lightning_logs .pytest_cache data/cache

distclean: clean
	rm -rf $(VENV) *.egg-info

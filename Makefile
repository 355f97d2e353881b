# Two entry points for a fresh machine (see README): `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: install quickstart test clean

$(BIN)/tx-suite: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	@touch $@

install: $(BIN)/tx-suite

# Train the CPU quickstart translation model on bundled Multi30k (de->en), then score test_2016_flickr.
quickstart: install
	$(BIN)/tx-suite fit --config experiments/translation/multi30k_de_en_quickstart.yaml
	$(BIN)/tx-suite test --config experiments/translation/multi30k_de_en_quickstart.yaml --ckpt_path last

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs wandb lightning_logs .pytest_cache data/cache

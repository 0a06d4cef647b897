# Quick start:  make train   (main job: train a tokenizer)   |   make test   (the test suite)
# The first call creates .venv and installs the project; later calls reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/stage1/tiny.yaml
ARGS ?=

.PHONY: venv train evaluate test bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

train: $(VENV)/.installed  ## train a stage-1 tokenizer: make train [CONFIG=...] [ARGS="key=value ..."]
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		stage1_tokenizer/train.py --config $(CONFIG) $(ARGS)

test: $(VENV)/.installed  ## run the tests (offline, CPU)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.installed  ## stage-1 training-step benchmark -> docs/benchmarks.md
	$(PY) benchmarks/bench_stage1.py $(ARGS)

clean-venv:
	rm -rf $(VENV)

# Quick start:  make app   (main job: the web UI on the shipped faces)   |   make test   (the test suite)
# The first call creates .venv and installs the project; later calls reuse it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/stage1/tiny.yaml
ARGS ?=

.PHONY: venv app screenshot train tokens prior sample pipeline generator evaluate test bench clean-venv
STAGE1 ?= runs/stage1/tiny
STAGE2_CONFIG ?= configs/stage2/tiny.yaml
TOKENS ?= runs/tokens/tiny
PRIOR ?= runs/stage2/tiny
# accelerate launch gives each process ONE CPU thread unless told otherwise (measured on 2 cores, the shipped
# tokenizer's training: about 37 images/s with one thread against 56 with two)
THREADS ?= $(shell nproc 2>/dev/null || echo 1)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

app: $(VENV)/.installed  ## the web UI at http://127.0.0.1:7860: make app [ARGS="--port 8080 --tokenizer DIR --prior DIR ..."]
	$(PY) -m app $(ARGS)

screenshot: $(VENV)/.installed  ## the browser test (needs chromium + chromium-driver), writing docs/app_screenshot.png
	APP_SCREENSHOT=docs/app_screenshot.png HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs tests/test_app_browser.py

train: $(VENV)/.installed  ## train a stage-1 tokenizer: make train [CONFIG=...] [ARGS="key=value ..."]
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --num_cpu_threads_per_process $(THREADS) --mixed_precision no --dynamo_backend no \
		stage1_tokenizer/train.py --config $(CONFIG) $(ARGS)

tokens: $(VENV)/.installed  ## encode the tokenizer's training data once: make tokens [STAGE1=... TOKENS=...]
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --num_cpu_threads_per_process $(THREADS) --mixed_precision no --dynamo_backend no \
		stage2_prior/extract_tokens.py --tokenizer $(STAGE1)/tokenizer --out $(TOKENS)

prior: $(VENV)/.installed  ## train a prior: make prior [STAGE2_CONFIG=... TOKENS=... PRIOR=... ARGS="key=value ..."]
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --num_cpu_threads_per_process $(THREADS) --mixed_precision no --dynamo_backend no \
		stage2_prior/train.py --config $(STAGE2_CONFIG) data.tokens=$(TOKENS) output_dir=$(PRIOR) $(ARGS)

sample: $(VENV)/.installed  ## sample 16 images: make sample [PRIOR=... STAGE1=...]
	$(PY) -m stage2_prior.sample --prior $(PRIOR)/prior --tokenizer $(STAGE1)/tokenizer --num 16 --out runs/samples/$(notdir $(PRIOR))

pipeline: train tokens prior sample  ## toy end to end on a CPU: tokenizer, tokens, prior, samples

generator: $(VENV)/.installed  ## a generator from your images, into the app: make generator DATA=folder:/my/images NAME=mine [ARGS="--preset tiny"]
	@test -n "$(DATA)" -a -n "$(NAME)" || { echo "usage: make generator DATA=folder:/my/images NAME=mine [ARGS=\"--preset tiny key=value ...\"] (docs/build.md)"; exit 2; }
	$(PY) -m stage2_prior.build --data $(DATA) --name $(NAME) --threads $(THREADS) $(ARGS)

test: $(VENV)/.installed  ## run the tests (offline, CPU)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

bench: $(VENV)/.installed  ## stage-1 training-step benchmark -> docs/benchmarks.md
	$(PY) benchmarks/bench_stage1.py $(ARGS)

clean-venv:
	rm -rf $(VENV)

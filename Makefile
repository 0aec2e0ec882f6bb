# mmpr-forge.  `make build-mmpr` and `make test` set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/sample.yaml
# OUT=dir overrides the dataset folder; RAY_ADDRESS=ray://host:10001 runs on a cluster
OUT ?=
RAY_ADDRESS ?=
ARGS ?=
# cpu | gpu | auto (gpu when nvidia-smi sees a GPU)
PROFILE ?= auto
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_CONFIGURE_LOGGING := 0

.PHONY: setup build-mmpr test test-fast bench tiny-model sample-data lock clean help

help:
	@echo "make build-mmpr [CONFIG=configs/mmpr.yaml] [OUT=dir] [RAY_ADDRESS=...]   build a preference dataset"
	@echo "make test        run the test suite (every tier); make test-fast  only the unit tier"
	@echo "make bench       run the benchmarks"
	@echo "make tiny-model  build the tiny local VLM; make sample-data  regenerate sample data"

setup:
	@PYTHON=$(PYTHON) VENV=$(VENV) PROFILE=$(PROFILE) bash scripts/setup.sh

sample-data: setup
	$(BIN)/python -m pipeline sample-data --out data/sample

tiny-model: setup
	$(BIN)/python -m pipeline tiny-model --out models/tiny-idefics3 --data data/sample

build-mmpr: setup
	$(BIN)/python -m pipeline run --config $(CONFIG) \
	  $(if $(OUT),--output $(OUT)) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) $(ARGS)

test: setup
	@VENV=$(VENV) bash scripts/setup-test.sh
	$(BIN)/python -m pytest -q --durations=25 tests

# the unit tier: no vLLM engine, no build (markers: tests/conftest.py)
test-fast: setup
	@VENV=$(VENV) bash scripts/setup-test.sh
	$(BIN)/python -m pytest -q -m unit tests

bench: setup
	$(BIN)/python bench/run_all.py

# re-resolve the CPU closure after editing requirements/cpu.in
lock:
	rm -rf /tmp/mmpr-lock && $(PYTHON) -m venv /tmp/mmpr-lock && /tmp/mmpr-lock/bin/pip install -q -r requirements/cpu.in \
	  && /tmp/mmpr-lock/bin/pip uninstall -y -q torchvision torchaudio torchcodec \
	  && { head -3 requirements/cpu.lock.txt; /tmp/mmpr-lock/bin/pip freeze; /tmp/mmpr-lock/bin/pip freeze --all | grep "^setuptools=="; } > requirements/cpu.lock.tmp \
	  && mv requirements/cpu.lock.tmp requirements/cpu.lock.txt

clean:
	rm -rf build out .pytest_cache

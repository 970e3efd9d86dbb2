# sslpipe -- `make run` runs the whole pipeline, `make test` runs the tests. Both set up .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed
# pytest-xdist workers; the smoke-project tests stay together in one (tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: help install data run smoke test test-fast ui ui-stop bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install sslpipe with its dependencies

data:  ## make Fashion-MNIST available (Debian package dataset-fashion-mnist)
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null && echo "installed dataset-fashion-mnist"; \
	elif command -v apt-get >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not found in $(FMNIST_DIR): set ingest.download: true in params.yaml (needs internet)"; fi

run: install data  ## run the whole pipeline on Fashion-MNIST with params.yaml
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/sslpipe run

smoke: install data  ## the pipeline on a tiny slice, in a couple of minutes
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/sslpipe run --smoke

test: install data  ## run the test suite (unit, stage, end-to-end)
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: install  ## the tests without the slow end-to-end ones
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not e2e"

ui: install  ## start the Prefect and MLflow servers (UIs) in the background; `make ui-stop` stops them
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/sslpipe server start

ui-stop:  ## stop the servers `make ui` started
	@if [ -x $(BIN)/sslpipe ]; then PATH=$(abspath $(BIN)):$$PATH $(BIN)/sslpipe server stop; fi

bench: install data  ## throughput benchmark (prints its setup and figures)
	PATH=$(abspath $(BIN)):$$PATH $(PY) bench/throughput.py

clean:  ## remove pipeline outputs, tracking stores and scratch (keeps .venv)
	rm -rf data/dataset models reports mlflow.db mlruns .prefect .sslpipe dvc.lock

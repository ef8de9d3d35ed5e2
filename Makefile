# Set-up and checks for a fresh machine. `make demo` runs the main job on the embedded default
# model; `make test` runs the test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Without a GPU, pin the CPU build of torch: a plain `torch` pulls several GB of CUDA packages.
# The CI machines' pip finds a local CPU wheel of 2.13.0; elsewhere, point pip at PyTorch's CPU
# index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
TORCH_INDEX ?=

.PHONY: install demo demo-quick demo-multiply lint test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python examples/demo.py

demo-quick: install
	$(BIN)/python examples/demo.py --quick

demo-multiply: install
	$(BIN)/python examples/demo.py --multiply

lint: install
	$(BIN)/ruff check localdistil tests bench examples

test: lint
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/trace_overhead.py

clean:
	rm -rf $(VENV) runs traces

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

.PHONY: install clients demo demo-quick demo-multiply lint test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

# Real clients that need Python >= 3.12 (functioncalming) get a venv of their own; their tests
# run them as a separate process and skip, saying why, where no such Python exists.
CLIENTS_VENV ?= .venv-clients
CLIENT_PYTHON ?= $(shell $(PYTHON) tests/clients/find_python.py)

clients: $(CLIENTS_VENV)/.installed

$(CLIENTS_VENV)/.installed: tests/clients/requirements.txt
	$(if $(CLIENT_PYTHON),$(CLIENT_PYTHON) -m venv $(CLIENTS_VENV) && \
	  $(CLIENTS_VENV)/bin/pip install --quiet --disable-pip-version-check -r $< && touch $@,\
	  @echo "no Python >= 3.12 here: the functioncalming client test will be skipped")

demo: install
	$(BIN)/python examples/demo.py

demo-quick: install
	$(BIN)/python examples/demo.py --quick

demo-multiply: install
	$(BIN)/python examples/demo.py --multiply

lint: install
	$(BIN)/ruff check localdistil tests bench examples

test: lint clients
	$(BIN)/python -m pytest

test-fast: install clients
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/trace_overhead.py

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) runs traces

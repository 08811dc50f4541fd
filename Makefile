# sowa-repro — the two commands a fresh clone needs: `make reproduce-all` and `make test`.
PYTHON   ?= python3.11
VENV     ?= .venv
PY       := $(VENV)/bin/python
PROFILE  ?= demo
DATA_ROOT ?=
DATASETS ?= demo
EXECUTOR ?= local
NOTEBOOK ?=
# torch is pinned to the release served from this workplace's local disk; a plain `torch` would
# pull a multi-GB CUDA download.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install reproduce-all reproduce test test-lib test-notebooks data benchmarks notebooks-refresh report check-report clean-results

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## Run every numbered notebook with papermill (demo profile unless PROFILE=paper DATA_ROOT=...).
reproduce-all: install
	$(PY) notebooks/reproduce.py --profile $(PROFILE) --executor $(EXECUTOR) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## Run one notebook: make reproduce NOTEBOOK=02_few_shot
reproduce: install
	$(PY) notebooks/reproduce.py --profile $(PROFILE) --executor $(EXECUTOR) --only $(NOTEBOOK) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## Library tests, then the notebooks re-executed by nbval on the demo profile.
test: test-lib test-notebooks

test-lib: install
	$(PY) -m pytest -q tests

test-notebooks: install
	SOWA_PROGRESS=summary $(PY) -m pytest -q --nbval-lax -p no:cacheprovider notebooks/

## Download/verify/extract benchmarks: make data DATASETS=mvtec,visa DATA_ROOT=/data
data: install
	$(PY) -m sowa_lib.data.prepare --datasets $(DATASETS) $(if $(DATA_ROOT),--root $(DATA_ROOT))

## Speed and metric benchmarks (print measured ratios).
benchmarks: install
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/methods.py

## Re-execute the committed notebooks in place so that they show current demo outputs, normalised
## (no timestamps, absolute paths or volatile metadata: sowa_lib.nbclean).
notebooks-refresh: install
	$(PY) notebooks/reproduce.py --profile demo --in-place
	$(PY) -m sowa_lib.nbclean notebooks/[0-9][0-9]_*.ipynb

## One self-contained HTML report of the study: results/$(PROFILE)/report.html (after reproduce-all).
report: install
	$(PY) -m sowa_lib.report --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## Load the report in headless Chromium (Debian: apt-get install chromium); fails on a console error or a missing image.
check-report: report
	$(PY) tools/check_report.py results/$(PROFILE)/report.html

clean-results:
	rm -rf results/$(PROFILE) figures/$(PROFILE)

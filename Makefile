# sowa-repro — the two commands a fresh clone needs: `make reproduce-all` and `make test`.
PYTHON   ?= python3.11
VENV     ?= .venv
PY       := $(VENV)/bin/python
PROFILE  ?= demo
DATA_ROOT ?=
DATASETS ?= demo
EXECUTOR ?= local
DEVICE   ?= cpu
NOTEBOOK ?=
# torch/torchvision are pinned to the release this study was built and tested with (the workplace it
# was built in serves that release from local disk). Wherever the index is PyPI, that is the CUDA
# build on Linux: torch plus its nvidia-* and triton packages make a ~6.4 GB environment. For a
# CPU-only build (about 2 GB in all) name an index that serves one:
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TORCH_INDEX_URL ?=

.PHONY: install reproduce-all reproduce smoke smoke-ci test test-lib test-notebooks data benchmarks notebooks-refresh report check-report clean-results clean-features

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## Run every numbered notebook with papermill (demo profile unless PROFILE=paper DATA_ROOT=...).
reproduce-all: install
	$(PY) notebooks/reproduce.py --profile $(PROFILE) --executor $(EXECUTOR) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## Run one notebook: make reproduce NOTEBOOK=02_few_shot
reproduce: install
	$(PY) notebooks/reproduce.py --profile $(PROFILE) --executor $(EXECUTOR) --only $(NOTEBOOK) $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

## The paper profile's code path on fabricated data with random weights: every notebook and table,
## then each method's time and peak memory at paper resolution (README, "Smoke profile").
smoke: install
	$(MAKE) reproduce-all PROFILE=smoke DATA_ROOT=
	$(PY) -m sowa_lib.smoke --device $(DEVICE)

## The reduced smoke (one layout per method family, one category); SMOKE_ONLY="sowa agpnet" runs
## some method families only (CI runs the ones that fit its budget on two CPU cores).
SMOKE_ONLY ?=
smoke-ci: install
	$(PY) -m sowa_lib.smoke --device $(DEVICE) $(if $(SMOKE_ONLY),--only $(SMOKE_ONLY))

## Library tests, then the notebooks re-executed by nbval on the demo profile. Both import this
## checkout's sowa_lib (PYTHONPATH), whichever checkout the environment was installed from.
test: test-lib test-notebooks

test-lib: install
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q tests

## The notebooks write their results and figures to a temporary folder (SOWA_RESULTS_DIR), never
## into results/ or figures/; like reproduce-all, their kernels share frozen encodings through the
## disk feature cache in that folder.
test-notebooks: install
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	SOWA_PROGRESS=summary SOWA_FEATURE_CACHE=disk PYTHONPATH=$(CURDIR) SOWA_RESULTS_DIR=$$tmp/results $(PY) -m pytest -q --nbval-lax -p no:cacheprovider notebooks/

## Download/verify/extract benchmarks: make data DATASETS=mvtec,visa DATA_ROOT=/data
data: install
	$(PY) -m sowa_lib.data.prepare --datasets $(DATASETS) $(if $(DATA_ROOT),--root $(DATA_ROOT))

## Speed and metric benchmarks (print measured ratios); DEVICE=cuda: the GPU benchmark instead
## (benchmarks/gpu.py; on a machine without a GPU it says so and exits with status 3).
benchmarks: install
ifeq ($(DEVICE),cuda)
	$(PY) benchmarks/gpu.py
else
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/methods.py
endif

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

## Remove the on-disk frozen-feature cache of a profile (reproduce-all's default, SOWA_FEATURE_CACHE=disk).
clean-features:
	rm -rf results/$(PROFILE)/features

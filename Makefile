# make demo   set up, run the whole pipeline on the embedded default, compile paper/main.pdf
# make test   set up, lint, run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
TEST_WORKERS ?= $(CORES)
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export OUTDATED_IGNORE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: setup tex browser demo test repro dvc-yaml dvc-commit exps clean

setup: $(VENV)/.installed tex browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# Debian packages, installed with apt where we may (root, or sudo without a password):
# $(1) a command that shows they are there, $(2) the packages, $(3) what they are, $(4) what happens without.
define apt_install
@command -v $(1) >/dev/null && exit 0; \
pkgs="$(2)"; \
if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
if [ "$$sudo" != none ] && command -v apt-get >/dev/null \
   && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null 2>&1 \
   || { $$sudo apt-get update -qq >/dev/null 2>&1 && $$sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null 2>&1; }; then \
  echo "installed $(3) ($$pkgs)"; \
else echo "warning: could not install $(3) (apt-get install $$pkgs): $(4)"; fi
endef

# TeX Live for the paper.
tex:
	$(call apt_install,latexmk,latexmk texlive-latex-base texlive-latex-recommended texlive-fonts-recommended,TeX Live,the paper stage will say how)

# Headless Chromium: the tests that open the HTML report and `dvc plots show` pages and check that the
# figures render (tests/browser.py).
browser:
	$(call apt_install,chromium,chromium,Chromium,the tests that open pages in a browser are skipped)

demo: setup
	snakemake --cores $(CORES) --rerun-incomplete
	$(MAKE) --no-print-directory dvc-commit
	@# the demo's results as the experiment `demo`, the baseline of `python -m pipeline exp-run -S key=value` (needs a Git commit)
	-dvc exp save --force --name demo --quiet
	@echo "done: paper/main.pdf (compare experiments: make exps)"

# Record what Snakemake produced in dvc.lock (and the DVC cache), so that
# `dvc repro`, `dvc status` and `dvc metrics show` agree with Snakemake
# (keeping the timestamps Snakemake judges freshness by: pipeline/tools/dvc_commit.py).
dvc-commit:
	python -m pipeline validate --write results/params.ok
	python -m pipeline dvc-commit

# One pytest-xdist worker per core; a module sharing a module-scoped fixture stays on one worker (tests/conftest.py).
test: setup
	ruff check .
	pytest -q -n $(TEST_WORKERS) --dist loadgroup

# Run the DAG through DVC, then tell Snakemake its outputs are current: DVC
# re-runs what changed but cannot update Snakemake's provenance records.
repro:
	dvc repro
	snakemake --touch --cores 1 --quiet

# DVC experiments (python -m pipeline exp-run -S key=value) as one table: the params and metrics that differ.
exps:
	python -m pipeline exps

# Re-render dvc.yaml after changing the experiment grid in params.yaml.
dvc-yaml: $(VENV)/.installed
	python -m pipeline export-dvc

clean:
	rm -rf results data/prepared data/weights logs benchmarks paper/tables paper/figures paper/main.pdf .snakemake

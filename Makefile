# make demo   set up, run the whole pipeline on the embedded default, compile paper/main.pdf
# make test   set up, lint, run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
CORES ?= 2
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export OUTDATED_IGNORE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: setup tex demo test repro dvc-yaml dvc-commit exps clean

setup: $(VENV)/.installed tex

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# TeX Live for the paper, from Debian's packages, where we may install them.
tex:
	@command -v latexmk >/dev/null && exit 0; \
	pkgs="latexmk texlive-latex-base texlive-latex-recommended texlive-fonts-recommended"; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	if [ "$$sudo" != none ] && command -v apt-get >/dev/null \
	   && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null 2>&1 \
	   || { $$sudo apt-get update -qq >/dev/null 2>&1 && $$sudo env DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null 2>&1; }; then \
	  echo "installed TeX Live ($$pkgs)"; \
	else echo "warning: could not install TeX Live; the paper stage will say how (apt-get install $$pkgs)"; fi

demo: setup
	snakemake --cores $(CORES) --rerun-incomplete
	$(MAKE) --no-print-directory dvc-commit
	@# the demo's results as the experiment `demo`, the baseline of `dvc exp run -S key=value` (needs a Git commit)
	-dvc exp save --force --name demo --quiet
	@echo "done: paper/main.pdf (compare experiments: make exps)"

# Record what Snakemake produced in dvc.lock (and the DVC cache), so that
# `dvc repro`, `dvc status` and `dvc metrics show` agree with Snakemake
# (keeping the timestamps Snakemake judges freshness by: pipeline/dvc_commit.py).
dvc-commit:
	python -m pipeline validate --write results/params.ok
	python -m pipeline dvc-commit

test: setup
	ruff check .
	pytest -q

# Run the DAG through DVC, then tell Snakemake its outputs are current: DVC
# re-runs what changed but cannot update Snakemake's provenance records.
repro:
	dvc repro
	snakemake --touch --cores 1 --quiet

# DVC experiments (dvc exp run -S key=value) as one table: the params and metrics that differ.
exps:
	python -m pipeline exps

# Re-render dvc.yaml after changing the experiment grid in params.yaml.
dvc-yaml: $(VENV)/.installed
	python -m pipeline export-dvc

clean:
	rm -rf results data/prepared data/weights logs benchmarks paper/tables paper/figures paper/main.pdf .snakemake

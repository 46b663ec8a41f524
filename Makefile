# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch first, from the CPU wheel on this machine's disk (any other version downloads gigabytes); then the package
# with its extras; then the Sapiens checkpoints (its setup asks for fairseq, which does not install: --no-deps).
$(STAMP): pyproject.toml Makefile
	@command -v hmmscan >/dev/null 2>&1 || { \
	  echo "installing Debian's hmmer (hmmscan, for ANARCI numbering)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq hmmer >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[sequence,test]'
	$(BIN)/pip install -q --no-deps sapiens==1.0.0
	@touch $@

demo: setup
	$(BIN)/workbench demo --out demo_out

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_extract.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache

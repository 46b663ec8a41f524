# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup demo demo-imaging test bench bench-sae clean

setup: $(STAMP)

# torch first, from the CPU wheel on this machine's disk (any other version downloads gigabytes); then the package
# with its extras; then the Sapiens checkpoints (its setup asks for fairseq, which does not install: --no-deps).
$(STAMP): pyproject.toml Makefile
	@{ command -v hmmscan && command -v chromium; } >/dev/null 2>&1 || { \
	  echo "installing Debian's hmmer (hmmscan, for ANARCI numbering) and chromium (the app's browser test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq hmmer chromium >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[sequence,imaging,app,test]'
	$(BIN)/pip install -q --no-deps sapiens==1.0.0
	@touch $@

demo: setup
	$(BIN)/workbench demo --out demo_out

# The medical-imaging demo: the shipped CNNs on PneumoniaMNIST and BreastMNIST into demo_out/imaging/
demo-imaging: setup
	$(BIN)/workbench demo --domain imaging --out demo_out

test: setup
	$(BIN)/python -m pytest -q

# Benchmarks on demand (results appended to benchmarks/RESULTS.md); the peer SAE benchmark has its own venv.
bench: setup
	$(BIN)/pip install -q 'psutil>=5.9'
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/sae_quality.py
	$(BIN)/python benchmarks/bench_associate.py
	$(BIN)/python benchmarks/bench_demo.py
	$(BIN)/python benchmarks/bench_antibody_concepts.py
	$(BIN)/python benchmarks/bench_app.py
	$(BIN)/python benchmarks/bench_imaging_cnn.py
	$(BIN)/python benchmarks/bench_imaging_demo.py

bench-sae: bench-venv
	$(BENCH_VENV)/bin/python benchmarks/bench_sae.py

# The SAE-training benchmark's own environment (benchmarks/bench_sae.py), kept apart from .venv so the peers never
# reach the test suite. overcomplete and dictionary-learning go in with --no-deps, plus what their SAE code imports:
# both ask for torchvision (overcomplete directly, dictionary-learning through nnsight 0.3), and the registry's
# torchvision, built for CUDA torch, fails to import beside the CPU torch 2.13.0 and breaks transformers with it.
BENCH_VENV ?= .venv-bench
.PHONY: bench-venv
bench-venv: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml Makefile
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/pip install -q -e '.[sequence,imaging,bench]' torch==2.13.0
	$(BENCH_VENV)/bin/pip install -q --no-deps sapiens==1.0.0 overcomplete==0.3.0 dictionary-learning==0.1.0 nnsight==0.3.7
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0 einops scipy scikit-learn pillow 'python-socketio[client]'
	$(BENCH_VENV)/bin/python -c "from transformers import BertModel; import sae_lens, dictionary_learning.trainers.top_k"
	@touch $@

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# Two commands a fresh machine needs:  `make demo` (the main job) and `make test` (the test suite).
# Each creates ./.venv and installs what it needs. torch is pinned to the release this project is tested
# with and installed first, so pip never resolves a different (multi-GB CUDA) build.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs bench-step peers clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,hf,docs]"
	touch $(STAMP)

# The main job: AdamW (lr-swept), gradspace presets and the peer libraries side by side on real text (< 10 min).
demo: $(STAMP) peers
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m gradspace bench --task lm --quick --out bench_out/lm_quick

test: $(STAMP) peers
	$(BIN)/python -m pytest -q
	$(MAKE) docs

# The documentation site (mkdocs-material + mkdocstrings) into build/site; warnings and broken references fail it.
# Runs docs/gen_errors.py (about a second) and docs/gen_benchmarks.py (reads result files, runs no benchmark).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# Peer libraries (optional): used by reference tests and benchmarks when importable. They pin torch loosely
# and import transformers/bitsandbytes, so install them without dependencies under the torch constraint.
peers: $(VENV)/.peers
$(VENV)/.peers: $(STAMP)
	-$(BIN)/pip install -q -c constraints.txt lightning && \
	 $(BIN)/pip install -q --no-deps galore-torch==1.0 apollo-torch==1.0.3 fira==1.0.2 bitsandbytes==0.50.2 && \
	 touch $(VENV)/.peers

bench-step: $(STAMP) peers
	$(BIN)/python benchmarks/step_memory.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

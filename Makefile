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
	@echo "==> creating $(VENV) with $(PY)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "==> installing $(TORCH) first (about 200 MB for the CPU build; the default Linux wheel from PyPI is the"
	@echo "    CUDA build, several GB: for CPU only, run make TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu')"
	$(BIN)/pip install -q $(TORCH)
	@echo "==> installing gradspace (editable) with the dev, hf and docs extras: pytest, transformers, accelerate, mkdocs, ..."
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,hf,docs]"
	touch $(STAMP)
	@echo "==> $(VENV) is ready"

# The main job: AdamW (lr-swept), gradspace presets and the peer libraries side by side on real text (< 10 min).
demo: $(STAMP) peers
	@echo "==> gradspace bench --task lm --quick (< 10 min on 2 CPU cores; results in bench_out/lm_quick)"
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m gradspace bench --task lm --quick --out bench_out/lm_quick

test: $(STAMP) peers
	@echo "==> pytest (the test suite and doctests), then the docs build"
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
	@echo "==> installing the optional peers: lightning, galore-torch, apollo-torch, fira, bitsandbytes (--no-deps)"
	-$(BIN)/pip install -q -c constraints.txt lightning && \
	 $(BIN)/pip install -q --no-deps galore-torch==1.0 apollo-torch==1.0.3 fira==1.0.2 bitsandbytes==0.50.2 && \
	 touch $(VENV)/.peers

bench-step: $(STAMP) peers
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/step.py --json bench_out/step.json --md bench_out/step.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

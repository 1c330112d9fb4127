# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch==2.13.0 is pinned only at install time: a CPU wheel of it lies on these machines' disk,
# while an open range would pull a multi-GB CUDA build. pyproject.toml keeps an open range.
TORCH ?= torch==2.13.0
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[train,dev,stress]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/superalign demo

# The tests' torch threads (outcome tests are checked with 1 and 2; see tests/conftest.py).
TEST_THREADS ?= 1

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	test -d /usr/share/wordnet || (apt-get update -qq && apt-get install -y -qq wordnet-base)  # world:hypernyms
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check superalign tests bench
	$(BIN)/ruff format --check superalign tests bench

bench: $(STAMP)
	$(BIN)/superalign bench

clean:
	rm -rf $(VENV) runs .pytest_cache

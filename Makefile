# The sidecar's developer entry points. Everything runs from the project virtualenv (.venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYDIRS := $(wildcard sidecar tests bench examples scripts)
OPA     = $(shell bash scripts/get-opa.sh)

.PHONY: install run demo test lint fmt bench policy-test opa clean

$(BIN)/sidecar: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/sidecar ## create .venv and install the package with its dev extras

opa: ## print the path of a real opa binary (builds it offline on first use; cached)
	@bash scripts/get-opa.sh

run: install ## run the sidecar against SIDECAR_UPSTREAM_URL (set SIDECAR_UPSTREAM_API_KEY)
	SIDECAR_STATIC_KEYS_FILE=$${SIDECAR_STATIC_KEYS_FILE:-examples/keys.json} $(BIN)/sidecar serve

demo: install ## dev-upstream + sidecar + a real openai-agents agent, with a readable summary
	$(BIN)/python examples/demo.py

test: install ## the whole test suite (needs opa; builds it on first use)
	OPA_BIN=$(OPA) $(BIN)/pytest -q

policy-test: install ## opa test on the shipped bundle, with coverage >= 90%
	$(OPA) test rego/ -v
	$(OPA) test rego/ --coverage --format=json | $(BIN)/python scripts/coverage-gate.py 90
	$(BIN)/sidecar policy test rego/ -q

lint: install ## ruff, formatting, mypy, opa fmt/check
	$(BIN)/ruff check $(PYDIRS)
	$(BIN)/ruff format --check $(PYDIRS)
	$(BIN)/mypy
	test -z "$$($(OPA) fmt --list rego/)" || { echo "rego/ is not opa-fmt clean: run opa fmt -w rego/"; exit 1; }
	$(OPA) check --strict rego/

fmt: install
	$(BIN)/ruff format $(PYDIRS)
	$(BIN)/ruff check --fix $(PYDIRS)

bench: install ## sidecar overhead vs a direct call, side by side with LiteLLM; then PII masking cost
	OPA_BIN=$(OPA) $(BIN)/python bench/bench.py $(BENCH_ARGS)
	$(BIN)/python bench/pii.py $(BENCH_ARGS)
	$(BIN)/python bench/budget.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .bench-venv .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The sidecar's developer entry points. Everything runs from the project virtualenv (.venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYDIRS := $(wildcard sidecar tests bench examples scripts)
OPA     = $(shell bash scripts/get-opa.sh)

.PHONY: install run demo test test-kube lint fmt bench policy-test opa clean chart-policy

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

test: install ## the whole test suite (installs redis-server; builds opa, kube-apiserver and etcd on first use, then cached)
	@echo "make test: checking redis-server, opa and the kube binaries (installed or built on first use)"
	bash scripts/get-redis.sh >/dev/null
	bash scripts/get-kube.sh >/dev/null
	OPA_BIN=$(OPA) $(BIN)/pytest -q

test-kube: install ## the webhook end to end on a real kube-apiserver + etcd (built on first use, ~5-10 min; cached)
	bash scripts/get-kube.sh
	$(BIN)/pytest -q -m kube

policy-test: install ## opa test on the shipped bundle, with coverage >= 90%
	$(OPA) test rego/ -v
	$(OPA) test rego/ --coverage --format=json | $(BIN)/python scripts/coverage-gate.py 90
	$(BIN)/sidecar policy test rego/ -q

lint: install ## ruff, formatting, mypy, opa fmt/check
	$(BIN)/ruff check $(PYDIRS)
	$(BIN)/ruff format --check $(PYDIRS)
	$(BIN)/mypy
	test -z "$$($(OPA) fmt --list rego/)" || { echo "rego/ is not opa-fmt clean: run opa fmt -w rego/"; exit 1; }
	@# --schema: type-check every input.* reference against the shipped input schemas (a misspelled field fails)
	schema=$$(mktemp) && $(BIN)/python -m sidecar.schemas > $$schema \
		&& $(OPA) check --strict --schema $$schema rego/; rc=$$?; rm -f $$schema; exit $$rc

fmt: install
	$(BIN)/ruff format $(PYDIRS)
	$(BIN)/ruff check --fix $(PYDIRS)

bench: install ## sidecar overhead vs a direct call, side by side with LiteLLM; then PII masking cost
	OPA_BIN=$(OPA) $(BIN)/python bench/bench.py $(BENCH_ARGS)
	$(BIN)/python bench/request_line.py
	$(BIN)/python bench/pii.py $(BENCH_ARGS)
	$(BIN)/python bench/budget.py $(BENCH_ARGS)

chart-policy: ## copy rego/ (without the tests) into the Helm chart; tests/test_chart_opa.py fails when they differ
	rm -f charts/openai-policy-sidecar/policy/*.rego charts/openai-policy-sidecar/policy/*.json
	for f in rego/*.rego rego/*.json; do case $$f in *_test.rego) ;; *) cp $$f charts/openai-policy-sidecar/policy/ ;; esac; done

clean:
	rm -rf $(VENV) .bench-venv .pytest_cache .mypy_cache .ruff_cache *.egg-info

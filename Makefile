# The two commands a newcomer needs: `make demo` and `make test`. Everything else supports them.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

NODE_STAMP := devenv/oidc-provider/node_modules/.package-lock.json

.PHONY: install system-deps oidc-deps demo test lint typecheck protos protos-check unit e2e bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: system-deps $(STAMP)

# The OpenID Provider the identity tests log in against (npm oidc-provider, from the lockfile).
$(NODE_STAMP): devenv/oidc-provider/package-lock.json
	cd devenv/oidc-provider && npm ci --no-audit --no-fund --loglevel=error

oidc-deps: system-deps $(NODE_STAMP)

system-deps:
	@deploy/system-deps.sh

demo: install
	$(PY) -m devenv.demo

test: install oidc-deps protos-check lint typecheck
	$(VENV)/bin/pytest -q

unit: install
	$(VENV)/bin/pytest -q tests/unit

e2e: install
	$(VENV)/bin/pytest -q tests/e2e

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy controlplane agent cli wire redact devenv trail

# Benchmarks, not tests: ratios against baselines measured in the same run (docs/benchmarks.md).
# Run it on a quiet machine; BENCH_ARGS passes options, e.g. BENCH_ARGS='--quick'.
bench: install
	$(VENV)/bin/pip install --quiet -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

protos: install
	$(PY) protos/generate.py

protos-check: install
	$(PY) protos/generate.py --check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-data \
		devenv/oidc-provider/node_modules

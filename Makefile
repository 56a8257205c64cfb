# x402-meter developer commands. Every target installs what it needs first (idempotent):
# a fresh machine needs only Python 3.11+, pip, node/npm.
#
# Two install stamps: `make demo` and `make dev` need only the runtime (the package with its
# `demo` extra) and anvil (package.json's "dependencies"): no sudo, no browser, no dev tools.
# `make test` and the other developer targets add the `dev` extra, package.json's
# "devDependencies", and redis-server and chromium from Debian (with sudo when not root).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NPM_CI := npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

CHAT_JS := examples/fastapi_app/chat_page/build/x402-chat.js

.PHONY: install install-demo demo dev test lint format contracts bench clean docs wheel-demo chat

$(RUNTIME_STAMP): pyproject.toml package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	$(NPM_CI) --omit=dev
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP)
	@command -v redis-server >/dev/null && command -v chromium >/dev/null || { \
	  echo "installing redis-server and chromium (Debian packages) for the tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq redis-server chromium; }
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(NPM_CI)
	touch $@

install-demo: $(RUNTIME_STAMP)  ## the runtime, the demo extra and anvil only

$(CHAT_JS): examples/fastapi_app/chat_page/chat.mjs package-lock.json | $(DEV_STAMP)
	npm run --silent build:chat

chat: $(CHAT_JS)  ## bundle the chat page's script (the x402 TypeScript client, from npm)

install: $(DEV_STAMP) $(CHAT_JS)  ## everything the tests and the developer targets need

demo: $(RUNTIME_STAMP)  ## install, then pay for tokens end to end on the local stack
	$(BIN)/x402-meter demo

dev: $(RUNTIME_STAMP)  ## run the local stack until Ctrl-C
	$(BIN)/x402-meter dev

test: $(DEV_STAMP)  ## install, then run the whole test suite
	$(BIN)/python -m pytest

# The wheel as users get it: build the sdist and, from it, the wheel; install the wheel with
# the demo extra into a new venv outside the source tree; run the demo there (anvil from
# this checkout's node_modules, named by X402_METER_ANVIL); its first 402 must price the
# prompt as the tokenizer counts it (0.008210, not the bytes fallback's 0.008254).
wheel-demo: $(DEV_STAMP)  ## build the sdist and wheel, run `x402-meter demo` from the wheel
	rm -rf dist
	$(BIN)/python -m build --outdir dist . >/dev/null
	@set -eu; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	  wheel=$$(ls dist/*.whl); \
	  echo "installing $$wheel[demo] into $$out/venv"; \
	  $(PYTHON) -m venv "$$out/venv"; \
	  "$$out/venv/bin/python" -m pip install --quiet "$$wheel[demo]"; \
	  cd "$$out"; \
	  X402_METER_ANVIL="$(CURDIR)/node_modules/.bin/anvil" "$$out/venv/bin/x402-meter" demo \
	    | tee demo.log; \
	  grep -q "402 Payment Required: 'upto' up to 0.008210 USDC" demo.log; \
	  tail -n 1 demo.log | grep -q "demo complete"; \
	  echo "wheel-demo: the demo ran from $$wheel in $$out"

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(DEV_STAMP)  ## build the documentation site into site/ (fails on any warning)
	$(BIN)/mkdocs build --strict

contracts: $(DEV_STAMP)  ## recompile the Vyper contracts into their committed artifacts
	$(BIN)/python -m x402_meter.devstack.contract_build

bench: $(DEV_STAMP)  ## every benchmark side by side (~5 min); writes docs/benchmarks.md
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules dist .pytest_cache .mypy_cache .ruff_cache

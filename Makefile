# x402-meter developer commands. Every target installs what it needs first (idempotent):
# a fresh machine needs only Python 3.11+, pip, node/npm.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

CHAT_JS := examples/fastapi_app/chat_page/build/x402-chat.js

.PHONY: install demo dev test lint format contracts bench clean docs chat

$(STAMP): pyproject.toml package.json package-lock.json
	@command -v redis-server >/dev/null && command -v chromium >/dev/null || { \
	  echo "installing redis-server and chromium (Debian packages) for the tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq redis-server chromium; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(STAMP)

install: $(STAMP) $(CHAT_JS)

$(CHAT_JS): examples/fastapi_app/chat_page/chat.mjs package-lock.json | $(STAMP)
	npm run --silent build:chat

chat: $(CHAT_JS)  ## bundle the chat page's script (the x402 TypeScript client, from npm)

demo: $(STAMP)  ## install, then pay for tokens end to end on the local stack
	$(BIN)/x402-meter demo

dev: $(STAMP)  ## run the local stack until Ctrl-C
	$(BIN)/x402-meter dev

test: $(STAMP)  ## install, then run the whole test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(STAMP)  ## build the documentation site into site/ (fails on any warning)
	$(BIN)/mkdocs build --strict

contracts: $(STAMP)  ## recompile the Vyper contracts into their committed artifacts
	$(BIN)/python -m x402_meter.devstack.contract_build

bench: $(STAMP)  ## every benchmark side by side (~5 min); writes docs/benchmarks.md
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

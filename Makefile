# The two commands a fresh machine needs: `make run` and `make test`.
# Dependencies install from requirements.lock (exact versions, SHA-256 hashes);
# the README's "Pinned dependencies" says how to regenerate it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
HOST ?= 127.0.0.1
# llama-cpp-python compiles llama.cpp on install. A -march=native build turns on
# AMX on recent Xeons, and llama.cpp's AMX matmul segfaults on Gemma 3 there; an
# AVX2 build is portable across x86-64 machines and is built once per machine
# into a wheelhouse that later installs (and other clones) reuse.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
WHEELHOUSE := $(HOME)/.cache/llmsite/wheels-avx2

.PHONY: install run test lint format bench clean browser soak fuzz load faults

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps --no-cache-dir \
	    -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION)
	$(BIN)/pip install --no-deps --no-index --find-links $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION)
	$(BIN)/pip install --require-hashes -r requirements.lock
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py prepare_model
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v 0
	@$(BIN)/python manage.py create_api_key --tenant demo --name demo > $(VENV)/demo-key.txt
	@echo "Demo API key (shown once; tenant 'demo'):"
	@tail -n 1 $(VENV)/demo-key.txt && rm -f $(VENV)/demo-key.txt
	@echo "Serving on http://$(HOST):$(PORT)  (OpenAI base URL: http://$(HOST):$(PORT)/v1)"
	LLMSITE_PRELOAD=1 $(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

# The playground's browser test drives Debian's Chromium (Playwright's own
# browser download cannot reach its servers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Import contracts (pyproject's [tool.importlinter]) and types first: both take
# seconds, the suite takes minutes.
test: $(STAMP) browser
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python manage.py prepare_model
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/pip install -e ".[dev,bench]"
	$(BIN)/python bench/bench_decode.py

# The reliability suite's long parts (README "Reliability suite"): schemathesis
# against every operation, then Locust's mixed load with the accounting and
# memory checks, each on its own daphne over PostgreSQL + Redis.
SOAK_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
SOAK_REDIS_URL ?= redis://127.0.0.1:6379/15
FUZZ_ARGS ?=
LOAD_ARGS ?=

soak: fuzz load faults

$(VENV)/.soak-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install -e ".[dev,soak]"
	$(BIN)/python manage.py prepare_model
	touch $@

fuzz: $(VENV)/.soak-installed
	DATABASE_URL=$(SOAK_DATABASE_URL) REDIS_URL=$(SOAK_REDIS_URL) $(BIN)/python soak/fuzz.py $(FUZZ_ARGS)

load: $(VENV)/.soak-installed
	DATABASE_URL=$(SOAK_DATABASE_URL) REDIS_URL=$(SOAK_REDIS_URL) $(BIN)/python soak/run.py $(LOAD_ARGS)

# Their own redis-server, and PostgreSQL cluster, on free ports: the shared ones
# are never stopped.
FAULT_ARGS ?=
faults: $(VENV)/.soak-installed
	DATABASE_URL=$(SOAK_DATABASE_URL) $(BIN)/python soak/redis_fault.py
	$(BIN)/python soak/pg_fault.py $(FAULT_ARGS)

clean:
	rm -rf $(VENV) var staticfiles

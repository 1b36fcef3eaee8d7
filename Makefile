# make venv   — create .venv with everything (idempotent: reinstalls only when requirements/ change)
# make demo   — serve the offline demo (tiny random Qwen3-VL + adapters demo-a, demo-b) on ws://localhost:8765
# make test   — run the test suite
# make lint   — ruff + mypy
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := $(wildcard requirements/*.txt)
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: venv demo test lint clean

venv: $(STAMP)

$(STAMP): $(REQS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -c "import torch, torchvision, transformers, peft, websockets, streamlit"
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(PY) -m inference_worker --demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output

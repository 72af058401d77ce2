# The two commands of the README: `make demo` (the notebook series, demo profile) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= demo

.PHONY: demo test notebooks clean-outputs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: $(VENV)/.installed
	$(PY) -m maft notebooks --profile $(PROFILE)

notebooks: demo

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

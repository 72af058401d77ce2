# The two commands of the README: `make demo` (the notebook series, demo profile) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= demo
# Exact versions of every dependency, resolved from pyproject.toml's ranges (`make lock`): what the
# series and the tests were run with. pyproject.toml keeps the ranges for your own environments.
LOCK := requirements.lock

.PHONY: demo test notebooks clean-outputs lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: $(VENV)/.installed
	$(PY) -m maft notebooks --profile $(PROFILE)

notebooks: demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check maft tests
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Re-resolve the lock from pyproject.toml with uv, preferring the versions installed in $(VENV) (so
# the lock admits the environment the tests passed in; on this kind of machine torch and torchvision
# come from the local disk). Needs uv in $(VENV): $(PY) -m pip install uv
lock:
	mkdir -p build
	$(PY) -m pip freeze --exclude-editable | grep -v '^maft[=@ ]' > build/installed-versions.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --python $(PY) \
		--constraint build/installed-versions.txt --custom-compile-command 'make lock' \
		--no-annotate -o $(LOCK)

# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv build demo test lint clean

# The virtual environment, from the pinned requirements; rebuilt when they change.
$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

# The C kernels of `coviar`, rebuilt when their source changes.
build: $(STAMP) coviar_ext/coviar/_kernels.c
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

demo: build
	$(PY) demo.py

test: build
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf build *.egg-info coviar_ext/*.egg-info coviar_ext/coviar/*.so

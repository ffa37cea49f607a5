VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightningd-py demo

# The default run; soak and fault tests marked slow run with test-slow (CI runs both).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --reruns 1 --reruns-delay 1

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --reruns 1 --reruns-delay 1

lint: $(STAMP)
	$(VENV)/bin/ruff check lightningd_py plugins tests bench scripts examples
	$(VENV)/bin/ruff format --check lightningd_py plugins tests bench scripts examples

bench: $(STAMP)
	$(PY) bench/events.py

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) build *.egg-info

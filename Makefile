# The two commands of the README, each doing its own install into a virtual environment:
#   make demo   runs the example (with RabbitMQ if it answers, else embedded, no broker)
#   make test   runs the whole test suite (needs RabbitMQ and Redis running)
# PYTHON picks the interpreter the environment is made from (default python3).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check

.PHONY: demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[redis]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[redis,test,bench,example]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	cd example && ../$(PY) demo.py $(ARGS)

test: $(VENV)/.test-installed
	scripts/install-browser
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV)

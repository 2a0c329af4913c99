# The two commands of the README, each doing its own install into a virtual environment:
#   make demo   runs the example (with RabbitMQ if it answers, else embedded, no broker)
#   make test   runs the whole test suite (needs RabbitMQ and Redis running)
# PYTHON picks the interpreter the environment is made from (default python3).
# And the version matrix of tox.ini:
#   make tox    the oldest and newest corners, lint and type (ENVS=a,b for others; ARGS to tox)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check

.PHONY: demo test tox clean

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

# tox in its own environment (under .tox/, ignored by git), run with every pyenv Python
# 3.10-3.13 on PATH: tox finds interpreters only on PATH, and pyenv's shims for versions that
# are not selected do not count.
TOX_VENV ?= .tox/.runner
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
empty :=
space := $(empty) $(empty)
TOX_PATH = $(subst $(space),:,$(strip $(wildcard $(PYENV_ROOT)/versions/3.1[0-3].*/bin)))

$(TOX_VENV)/bin/tox:
	$(PYTHON) -m venv $(TOX_VENV)
	$(TOX_VENV)/bin/python -m pip --quiet --disable-pip-version-check install 'tox>=4.2'

tox: $(TOX_VENV)/bin/tox
	PATH="$(TOX_PATH)$(if $(TOX_PATH),:)$$PATH" $(TOX_VENV)/bin/tox $(if $(ENVS),-e $(ENVS),-m corners) $(ARGS)

clean:
	rm -rf $(VENV)

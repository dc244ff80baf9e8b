# Two entry points for a fresh machine (see README): `make run` and `make test`.
# Both create the project virtual environment on first use and reuse it afterwards:
# the install runs again only when setup.cfg or pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed
CFG    ?= yaml/live.yaml
PYTEST_ARGS ?=
# The suite on every core: one worker per core (each computing on one thread); DGL's distributed tests share one worker.
PYTEST_PARALLEL ?= -n auto --dist loadgroup

export DGLBACKEND := pytorch

# A second, DGL-free environment on a current PyTorch (requirements-current.txt; docs/gpu.md "Two PyTorch versions").
VENV_CURRENT ?= .venv-current
STAMP_CURRENT := $(VENV_CURRENT)/.installed

.PHONY: run test venv clean-venv venv-current test-current run-current

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,text]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m graphrec.run --cfg $(CFG)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV) $(VENV_CURRENT)

venv-current: $(STAMP_CURRENT)

$(STAMP_CURRENT): requirements-current.txt setup.cfg pyproject.toml
	@test -x $(VENV_CURRENT)/bin/python || $(PYTHON) -m venv $(VENV_CURRENT)
	$(VENV_CURRENT)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-current.txt
	$(VENV_CURRENT)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP_CURRENT)

test-current: $(STAMP_CURRENT)
	$(VENV_CURRENT)/bin/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

run-current: $(STAMP_CURRENT)
	$(VENV_CURRENT)/bin/python -m graphrec.run --cfg $(CFG)

# Set-up and entry points. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed

.PHONY: venv test test-fast demo clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# the everyday loop (under a minute on 2 cores): everything but the tests marked slow
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" ./run_superb.sh demo

clean:
	rm -rf $(VENV) demo

# One entry point per job. Every target creates .venv itself from the pinned requirement files.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint sandbox clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

demo: $(STAMP)        ## the main job: the dev stack against the local sandbox
	$(PY) -m sandbox demo

test: $(STAMP)        ## the whole suite, heavy matrices included
	$(PY) -m pytest -n 2 -q

test-fast: $(STAMP)   ## the suite without the heavy matrices
	$(PY) -m pytest -n 2 -q -m "not heavy"

bench: $(STAMP)       ## performance figures against design.md's targets
	$(PY) -m sandbox bench

lint: $(STAMP)
	$(PY) -m ruff check .

sandbox: $(STAMP)     ## serve the sandbox in the foreground on the default port
	$(PY) -m sandbox serve

clean:
	rm -rf $(VENV) .sandbox .rehearsal .pytest_cache

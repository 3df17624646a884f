# One entry point per job. Every target creates .venv itself from the pinned requirement files, and the
# ones that run the Pulumi CLI build it first (tools/pulumi/build.sh: pinned Go modules -> .tools/bin).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint sandbox pulumi actionlint azurite clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

pulumi:               ## the Pulumi CLI + Python language host in .tools/bin (rebuilt only when a pin changes)
	tools/pulumi/build.sh

actionlint:           ## the workflow linter the CI-template tests run, in .tools/bin (pinned Go module)
	tools/actionlint/build.sh

azurite:              ## Azurite (Azure Storage emulator) for the fleet's azblob:// tests, in .tools/azurite (pinned npm package)
	tools/azurite/build.sh

demo: $(STAMP) pulumi ## the main job: the dev stack against the local sandbox, through .tools/bin/pulumi
	$(PY) -m tools.demo

test: $(STAMP) pulumi actionlint azurite lint ## lint (ruff, mypy), then the whole suite, heavy matrices included
	$(PY) -m pytest -n 2 --dist worksteal -q

test-fast: $(STAMP) pulumi actionlint azurite ## the suite without the heavy matrices
	$(PY) -m pytest -n 2 --dist worksteal -q -m "not heavy"

bench: $(STAMP) pulumi ## performance figures against design.md's targets
	$(PY) -m tools.bench

lint: $(STAMP)      ## ruff on the tree; mypy on the shipped code; generated config docs up to date
	$(PY) -m ruff check .
	$(PY) -m mypy components __main__.py dynamics_provider fleet
	$(PY) -m tools.config_reference --check

sandbox: $(STAMP)     ## serve the sandbox in the foreground on the default port
	$(PY) -m sandbox serve

clean:
	rm -rf $(VENV) .sandbox .pulumi-state .pulumi-home .pytest_cache .tools

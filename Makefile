# One entry point per job. Every target creates .venv itself from the pinned requirement files, and the
# ones that run the Pulumi CLI build it first (tools/pulumi/build.sh: pinned Go modules -> .tools/bin).
#
# Python: PYTHON when set (`make PYTHON=python3.12 test`, or in the environment), else the newest supported
# CPython (3.13, 3.12, 3.11) that actually runs here (tools/find_python.sh: pyenv's shims don't count
# unless they run). .venv belongs to one interpreter: its stamp names it, so another one rebuilds .venv.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell tools/find_python.sh)
PYTHON_FROM := the newest supported that runs here; PYTHON=... for another
else
PYTHON_FROM := PYTHON=$(PYTHON)
endif
# version-crc32(base prefix): the same version from another installation is another interpreter
PY_ID_CODE := import sys, zlib; print("%d.%d.%d-%08x" % (*sys.version_info[:3], zlib.crc32(sys.base_prefix.encode())))
PY_ID  := $(if $(PYTHON),$(shell '$(PYTHON)' -c '$(PY_ID_CODE)' 2>/dev/null))
PYVER  := $(firstword $(subst -, ,$(PY_ID)))
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-python$(PY_ID)

ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),default)),)
$(info make: Python $(or $(PYVER),(none found)) at $(or $(PYTHON),-) for $(VENV) ($(PYTHON_FROM)))
endif

.PHONY: demo test test-fast test-long test-stress bench bench-scale lint sandbox pulumi actionlint azurite clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@case "$(PYVER)" in \
	    3.11.*|3.12.*|3.13.*) ;; \
	    "") echo "make: no supported Python (3.13, 3.12 or 3.11) runs here$(if $(PYTHON), (PYTHON=$(PYTHON) does not run)):" \
	             "install one, or set PYTHON=/path/to/python3.1x" >&2; exit 1 ;; \
	    *) echo "make: PYTHON=$(PYTHON) is Python $(PYVER); supported: 3.11, 3.12, 3.13 (pyproject.toml)" >&2; exit 1 ;; \
	esac
	@if [ "$$($(PY) -c '$(PY_ID_CODE)' 2>/dev/null)" != "$(PY_ID)" ]; then \
	    echo "make: building $(VENV) with Python $(PYVER) ($(PYTHON))"; \
	    rm -rf $(VENV) && '$(PYTHON)' -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@rm -f $(VENV)/.installed*
	touch $(STAMP)

pulumi:               ## the Pulumi CLI + Python language host in .tools/bin (rebuilt only when a pin changes)
	tools/pulumi/build.sh

actionlint:           ## the workflow linter the CI-template tests run, in .tools/bin (pinned Go module)
	tools/actionlint/build.sh

azurite:              ## Azurite (Azure Storage emulator) for the fleet's azblob:// tests, in .tools/azurite (pinned npm package)
	tools/azurite/build.sh

demo: $(STAMP) pulumi ## the main job: the dev stack against the local sandbox, through .tools/bin/pulumi
	$(PY) -m tools.demo $(DEMO_ARGS)

test: $(STAMP) pulumi actionlint azurite lint ## lint (ruff, mypy), then the whole suite, heavy matrices included (not `long`)
	$(PY) -m pytest -n 2 --dist worksteal -q -m "not long"

test-long: $(STAMP) pulumi azurite ## the tests beyond make test's time budget (marker `long`); CI runs them as their own part
	$(PY) -m pytest -n 2 --dist worksteal -q -m long

test-fast: $(STAMP) pulumi actionlint azurite ## the suite without the heavy matrices (nor `long`)
	$(PY) -m pytest -n 2 --dist worksteal -q -m "not heavy and not long"

# test-stress: STRESS_RUNS=1 for one run; STRESS_TESTS="tests/test_locks.py ..." instead of the selection in
# tests/stress.py; STRESS_ARGS="-m 'not heavy'" for more pytest arguments; STRESS_HOGS=N busy processes
# instead of one per core.
STRESS_RUNS  ?= 5
STRESS_TESTS ?=
STRESS_ARGS  ?=

test-stress: $(STAMP) pulumi azurite ## interruption, lock, Ctrl-C, engine-fault and fleet tests STRESS_RUNS times beside a CPU hog per core
	STRESS_RUNS=$(STRESS_RUNS) $(PY) tests/stress.py $(STRESS_TESTS) -- $(STRESS_ARGS)

bench: $(STAMP) pulumi ## performance figures against design.md's targets
	$(PY) -m tools.bench

bench-scale: $(STAMP) pulumi azurite ## fleet growth: add, warm preview, status at 50/200/500 stacks on file, 50/200 on azblob +20 ms (SIZES= AZBLOB_SIZES= BACKEND=file|azblob|both LATENCY_MS=)
	$(PY) -m tools.bench_scale $(if $(SIZES),--sizes $(SIZES)) $(if $(BACKEND),--backend $(BACKEND)) \
	    $(if $(AZBLOB_SIZES),--azblob-sizes $(AZBLOB_SIZES)) $(if $(LATENCY_MS),--latency-ms $(LATENCY_MS))

lint: $(STAMP)      ## ruff on the tree; mypy on the shipped code; generated config docs up to date
	$(PY) -m ruff check .
	$(PY) -m mypy components __main__.py dynamics_provider fleet
	$(PY) -m tools.config_reference --check

sandbox: $(STAMP)     ## serve the sandbox in the foreground on the default port
	$(PY) -m sandbox serve

clean:
	rm -rf $(VENV) .sandbox .pulumi-state .pulumi-home .pytest_cache .tools

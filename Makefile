# fslib: `make reproduce` runs every notebook on the embedded default; `make test` runs the tests.
# Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fslib-installed
# notebooks (and test workers) at a time: one per core, each kernel on one thread (see fslib/report.py)
JOBS ?= $(shell $(PYTHON) -c "import os; print(os.cpu_count() or 1)")
# processes per notebook for its independent units (seeds, variants: fslib/parallel.py): the cores left per job
PROCESSES ?= $(shell $(PYTHON) -c "import os; print(max(1, (os.cpu_count() or 1) // $(JOBS)))")

.PHONY: reproduce test check-reproduction lab course install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m fslib.report --jobs $(JOBS)

# JupyterLab on the notebooks (LAB_PORT=8888 by default; add LAB_ARGS=--no-browser on a remote machine)
LAB_PORT ?= 8888
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# student (exercise solutions removed, outputs cleared) and solution versions of the notebooks, under course/
course: $(STAMP)
	$(PY) -m fslib.course --out course

# unit tests, then every notebook at the lesson scale in fp32 under nbval, its claims compared by value with the
# committed lesson run (see conftest.py); plain `pytest` does the same on one worker
test: $(STAMP)
	FSLIB_PROCESSES=$(PROCESSES) $(PY) -m pytest -n $(JOBS) --dist loadfile --no-loadscope-reorder

# every notebook at the paper scale, its claims compared with the committed paper-scale run (not part of the tests)
check-reproduction: $(STAMP)
	$(PY) -m fslib.report --jobs $(JOBS) --scale paper --check

clean:
	rm -rf runs figures course .pytest_cache

# Two commands do everything on a fresh machine:
#   make course   run every notebook headless, in order, write results/ and print the comparison
#   make test     lint, unit tests, and every notebook under nbval (tiny profile unless COURSE_PROFILE says otherwise)
# Both create or refresh the local virtual environment .venv from requirements.txt when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: course test lint venv clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

course: $(STAMP)
	$(PY) scripts/run_course.py

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	COURSE_PROFILE=$${COURSE_PROFILE:-tiny} COURSE_RESULTS_DIR=$(CURDIR)/.cache/test-run/results \
	COURSE_OUTPUT_DIR=$(CURDIR)/.cache/test-run/outputs \
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=900 tests notebooks

clean-venv:
	rm -rf $(VENV)

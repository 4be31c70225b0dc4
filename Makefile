# The developers' front door. `make check` is exactly what CI runs after installing the Debian
# peers (.ci/run -> scripts/test); the other targets are its steps, for a faster loop.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: check venv lint format type imports unit integration vectors test

check:
	scripts/test

venv: $(BIN)/python
$(BIN)/python: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,fast]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_cycles.py

unit: venv
	$(BIN)/pytest -q -n 2 tests/unit tests/contract tests/property tests/dialogs tests/vectors

integration: venv
	$(BIN)/pytest -q -n 2 --dist loadfile tests/integration

test: lint type imports unit integration

# stageflow: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The example stage pack is installed too: the tests load it by entry point.
STAGE_PACK := examples/stage-pack

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml $(STAGE_PACK)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e $(STAGE_PACK)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/reference/run.py

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict stageflow _stageflow_pytest.py

pytest: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .coverage

# The two commands a newcomer needs: `make run` (chargegate dev: embedded defaults, emulated Google)
# and `make test` (the whole test suite). Both set up .venv from the lock files first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint openapi clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/chargegate dev

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

openapi: $(STAMP)
	$(BIN)/chargegate openapi --output openapi/openapi.json

clean:
	rm -rf $(VENV) var

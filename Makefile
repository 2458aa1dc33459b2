# Every target creates or refreshes .venv itself: a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pool-monitor demo

serve: $(STAMP)
	$(BIN)/pool-monitor serve

# Two workers (pytest-xdist), each on a database of its own; TEST_WORKERS=0 runs serially.
# `test` is the developer's run: everything but the end-to-end cases (a real browser, several
# server processes, descriptor floods); `test-slow` runs those; CI runs both (`test-all`).
TEST_WORKERS ?= 2
FAST_TESTS := not slow and not browser
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal
.PHONY: test-slow test-all
test: $(STAMP)
	$(PYTEST) -m "$(FAST_TESTS)" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PYTEST) -m "not ($(FAST_TESTS))" $(PYTEST_ARGS)

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check monitor tests bench
	$(BIN)/ruff format --check monitor tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix monitor tests bench
	$(BIN)/ruff format monitor tests bench

# The default scenarios (python -m bench --list names them all); BENCH_ARGS="--quick" for a short
# run, "--instrument callgrind" for the counted variants (needs valgrind).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# SQLAlchemy's own tests (pool, reconnect, execute, transaction, asyncio) without and with a
# monitor on every engine, on sqlite, psycopg2 and asyncpg; prints counts and any difference.
# Slow (15-30 minutes), so not part of `make test`. SQLA_SUITE_ARGS="--backend sqlite" narrows it.
.PHONY: sqla-suite
sqla-suite: $(STAMP)
	$(BIN)/python -m tests.sqlalchemy_suite.compare $(SQLA_SUITE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

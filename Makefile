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

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check monitor tests bench
	$(BIN)/ruff format --check monitor tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix monitor tests bench
	$(BIN)/ruff format monitor tests bench

bench: $(STAMP)
	$(BIN)/python bench/checkout.py
	if command -v valgrind >/dev/null; then $(BIN)/python bench/checkout_instructions.py; \
	else echo "bench/checkout_instructions.py skipped: no valgrind"; fi
	$(BIN)/python bench/scrape.py
	$(BIN)/python bench/probe.py
	$(BIN)/python bench/dashboard_poll.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/overhead_inprocess.py
	$(BIN)/python bench/overhead_bytecodes.py
	if command -v valgrind >/dev/null; then $(BIN)/python bench/overhead_instructions.py; \
	else echo "bench/overhead_instructions.py skipped: no valgrind"; fi
	if command -v valgrind >/dev/null; then $(BIN)/python bench/overhead_parts.py; \
	else echo "bench/overhead_parts.py skipped: no valgrind"; fi

# SQLAlchemy's own tests (pool, reconnect, execute, transaction, asyncio) without and with a
# monitor on every engine, on sqlite, psycopg2 and asyncpg; prints counts and any difference.
# Slow (15-30 minutes), so not part of `make test`. SQLA_SUITE_ARGS="--backend sqlite" narrows it.
.PHONY: sqla-suite
sqla-suite: $(STAMP)
	$(BIN)/python -m tests.sqlalchemy_suite.compare $(SQLA_SUITE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

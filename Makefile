.PHONY: install test lint format bench bench-query bench-hostile serve

install:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test]' -e ./contrib/tsagent-heartbeat

test:
	.venv/bin/pytest

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# Each script prints a Markdown table; the README quotes them.
bench:
	for b in codecs storage remote_write statsd csv_import join rollup anomaly; do \
		.venv/bin/python benchmarks/bench_$$b.py || exit 1; done

# Needs a real Prometheus (Debian package `prometheus`) to compare against.
bench-query:
	.venv/bin/python benchmarks/bench_query.py

# The daemon under attack, class by class (docs/security.md); a few minutes.
bench-hostile:
	.venv/bin/python benchmarks/bench_hostile.py

serve:
	.venv/bin/tsagent run

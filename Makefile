.PHONY: install test lint format bench bench-query bench-hostile serve docs

install:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test]' -e ./contrib/tsagent-heartbeat

test:
	.venv/bin/pytest

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# Each script prints a Markdown table; docs/benchmarks.md quotes them.
bench:
	for b in codecs storage remote_write churn statsd csv_import join rollup anomaly protocols; do \
		.venv/bin/python benchmarks/bench_$$b.py || exit 1; done

# Needs a real Prometheus (Debian package `prometheus`) to compare against.
bench-query:
	.venv/bin/python benchmarks/bench_query.py
	.venv/bin/python benchmarks/bench_ingest_under_query.py

# The daemon under attack, class by class (docs/security.md); a few minutes.
bench-hostile:
	.venv/bin/python benchmarks/bench_hostile.py

serve:
	.venv/bin/tsagent run

# The documentation site (docs/, mkdocs.yml) into site/; tests/test_docs.py builds it too.
docs:
	.venv/bin/mkdocs build --strict

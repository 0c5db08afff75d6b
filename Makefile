.PHONY: install test lint format bench serve

install:
	python3 -m venv .venv && .venv/bin/pip install -e '.[test]' -e ./contrib/tsagent-heartbeat

test:
	.venv/bin/pytest

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench:
	.venv/bin/python benchmarks/bench_codecs.py && .venv/bin/python benchmarks/bench_storage.py

serve:
	.venv/bin/tsagent run

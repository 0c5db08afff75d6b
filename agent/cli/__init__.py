"""The ``tsagent`` command line: ``main`` in :mod:`agent.cli.main`, one module per command family.

``agent.cli:main`` is the console entry point and ``python -m agent.cli``
runs it too (:mod:`agent.cli.__main__`).
"""

from __future__ import annotations

from agent.cli.main import _overrides, build_parser, config_reference, example_config, main

__all__ = ["_overrides", "build_parser", "config_reference", "example_config", "main"]

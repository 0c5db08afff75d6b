"""The Prometheus-compatible HTTP query API (``/api/v1/query`` and friends).

Core routes rather than a plugin: Grafana and every Prometheus client expect
them at fixed paths, the ``query`` config section that drives them is core,
and ``/api/v1/metadata`` must be served whichever ingestors are loaded.
:func:`agent.web.api.routes.install` adds them when the application is built.
Kept import-light: ``agent.context`` imports :mod:`agent.web.api.metadata`.
"""

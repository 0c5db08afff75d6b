"""Forwarding: the durable export log that feeds batch exporters (remote write upstream).

:mod:`agent.forward.export_log` keeps each exporter's position in SQLite and
delivers every committed batch at least once, in order. See docs/architecture.md.
"""

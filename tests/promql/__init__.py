"""Helpers for running Prometheus's PromQL test scripts against our engine."""

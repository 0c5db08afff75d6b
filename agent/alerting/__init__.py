"""Alerting: rules and their state (``rules``), notification routing (``dispatch``)."""

"""Prometheus remote-write/remote-read protobuf classes (generated; see README.md)."""

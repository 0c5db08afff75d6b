"""Fixture plugins registered directly by tests."""

"""Helpers for the storage tests (a test-only codec, the durability child script)."""

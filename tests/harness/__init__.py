"""Helpers shared by tests and benchmarks (loaded as a pytest plugin by tests/conftest.py)."""

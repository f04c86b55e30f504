"""Helpers shared by the tests: paths to the shared fixtures, numeric tolerances, tiny models and
the builders several test folders use. Pytest fixtures defined here are registered in tests/conftest.py."""

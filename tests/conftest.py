"""Shared test fixtures. Area-specific fixtures live in tests/<tier>/conftest.py."""

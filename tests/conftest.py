"""Shared test set-up. Reusable helpers (emulated fleets, a private redis-server) live in
tests/support/ and are imported by the tests that need them; this directory is on sys.path."""

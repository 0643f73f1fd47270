"""Test helpers that start real servers on 127.0.0.1 (never mocks of the feature under test)."""

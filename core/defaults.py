"""Domain defaults that more than one area falls back on: each is stated here once, and the gateway
settings, the policy schema, the router, the simulator and the command line all read it from here."""

DEFAULT_GPU = "h100"
"""The GPU profile of a pool or instance that names none (pools/profiles.py has the others)."""

DEFAULT_KEY_BLOCKS = 2
"""DualMap's affinity key: how many leading 256-character prefix blocks (about 128 tokens) decide it."""

DEFAULT_TTFT_SLO_MS = 2000.0
"""The TTFT SLO that reports, the simulator and the replay judge by when none is given."""

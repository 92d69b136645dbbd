"""Test-wide configuration: nothing here downloads anything; every model is built locally."""

import os

# No test may reach a model hub: fail fast instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Property-based tests (hypothesis): CI checks the same inputs every run (derandomised, no example
# database); HYPOTHESIS_PROFILE=dev explores new ones, and more of them.
from hypothesis import settings

settings.register_profile(
    "ci", derandomize=True, max_examples=250, deadline=None, database=None, print_blob=True
)
settings.register_profile("dev", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["tests.harness"]

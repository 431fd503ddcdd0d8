"""How many examples each fuzz test runs: 10,000 in CI (HYPOTHESIS_PROFILE=ci), 1,000 locally."""

from __future__ import annotations

import os

__all__ = ["FUZZ_EXAMPLES", "TWIN_EXAMPLES"]

FUZZ_EXAMPLES = 10_000 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 1_000
# Native-vs-Python twin checks run slow pure-Python references: fewer examples.
TWIN_EXAMPLES = 500 if os.environ.get("HYPOTHESIS_PROFILE") == "ci" else 100

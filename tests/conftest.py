"""Shared pytest setup: hypothesis profiles and markers' preconditions."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Parsers and native twins are fuzzed with FUZZ_EXAMPLES examples each; CI asks for
# the full 10,000 (HYPOTHESIS_PROFILE=ci, set by .ci/run), a developer's run for fewer.
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    print_blob=True,
)
settings.register_profile(
    "dev", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Collections register their output directory for the drgn plugin (see
# drgn_hvdump.dumpdir.registry.runtime_dir); keep the tests' registrations
# out of the machine's /run/hvdump. Subprocesses inherit it.
if "HVDUMP_RUNTIME_DIR" not in os.environ:
    import tempfile

    os.environ["HVDUMP_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="hvdump-test-run-")

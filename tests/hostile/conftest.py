"""Hypothesis profiles for the hostile-input tests: bounded example counts keep the suite fast.

``ci`` (chosen when ``CI`` is set) is derandomized, so a CI run is reproducible and never flaky;
``dev`` explores new examples on every run; ``deep`` (``HYPOTHESIS_PROFILE=deep``) is for a
longer local hunt.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=150, **_COMMON)
settings.register_profile("deep", max_examples=5000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

"""Test settings: hypothesis profiles, and the `cuda` marker skipped where no GPU is present."""

import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" is reproducible (derandomized) and sized for a 2-core machine; "dev" searches harder.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if marked and not _gpu_available():
        skip = pytest.mark.skip(reason="no CUDA GPU (or CuPy) on this machine")
        for item in marked:
            item.add_marker(skip)

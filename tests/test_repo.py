"""The repository's promises: README's two commands, CI running the README's test command."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    lines = open(os.path.join(REPO, "README.md")).read().splitlines()
    start = lines.index("```bash") + 1
    return lines[start], lines[start + 1]


def test_readme_starts_with_the_two_commands():
    lines = open(os.path.join(REPO, "README.md")).read().splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```bash"
    main_job, tests = readme_commands()
    assert "pip install" in main_job and "minicnn " in main_job
    assert "pip install" in tests and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci = open(os.path.join(REPO, ".ci", "run")).read().splitlines()
    assert readme_commands()[1] in ci


def test_readme_layer_study_examples_run():
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Study one layer by hand")[1].split("\n## ")[0]
    blocks = [b.split("```")[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 3
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["dx"].shape == namespace["x"].shape


def test_pyproject_uses_no_deprecated_setuptools_configuration():
    """setuptools stops building deprecated configuration after a date it announces (the license
    as a table {text = ...}: by 2027-02-18), so a warning today is a failed `pip install` later."""
    import warnings

    import pytest
    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    from setuptools.warnings import SetuptoolsDeprecationWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", SetuptoolsDeprecationWarning)
        dist = apply_configuration(Distribution(), os.path.join(REPO, "pyproject.toml"))
    assert dist.metadata.name == "minicnn" and "minicnn.kernels" in dist.packages


def test_the_wheel_gets_every_subpackage_and_kernel_file():
    """pyproject.toml lists the packages and data files by hand; the editable install the tests
    run from finds any file anyway, so a missed one would break only an installed wheel (a
    kernels/*.cu that cuda.py compiles, a new minicnn/ subpackage)."""
    import fnmatch

    import pytest
    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    dist = apply_configuration(Distribution(), os.path.join(REPO, "pyproject.toml"))
    folders = {p: os.path.join(REPO, dist.package_dir.get(p, p.replace(".", os.sep)))
               for p in dist.packages}
    found = set()
    for top in ("minicnn", "kernels"):
        for root, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                found.add(root)
            package = next((p for p, f in folders.items() if f == root), None)
            for name in files:
                if name.endswith((".py", ".pyc", ".so", ".pyd")) or name.startswith("."):
                    continue
                patterns = dist.package_data.get(package, []) if package else []
                assert any(fnmatch.fnmatch(name, p) for p in patterns), \
                    f"{os.path.join(root, name)} is in no package-data pattern of pyproject.toml"
    assert found == set(folders.values()), found ^ set(folders.values())

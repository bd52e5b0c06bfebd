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

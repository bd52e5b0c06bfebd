"""docs/learn.md's snippets run: every ```python block, each in a fresh namespace, as a reader
would paste it (its asserts are the checks; check_layer_gradient raises on a wrong backward)."""

import pathlib
import re

import numpy as np
import pytest

DOC = (pathlib.Path(__file__).parent.parent / "docs" / "learn.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC, flags=re.DOTALL | re.MULTILINE)


def test_every_stage_has_a_snippet():
    assert len(BLOCKS) == len(re.findall(r"^## \d+\. ", DOC, flags=re.MULTILINE)) >= 7


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index):
    np.random.seed(index)                      # the snippets draw with np.random
    exec(compile(  # noqa: S102 (running the page's own code is the test)
        BLOCKS[index], f"docs/learn.md[python block {index}]", "exec"), {})

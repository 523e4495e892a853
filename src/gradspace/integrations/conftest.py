"""pytest only (``--doctest-modules`` collects this package): skip the doctests that need an optional framework
when it is not installed, instead of failing with ImportError."""

from __future__ import annotations

import importlib.util

import pytest

from .._extras import install_hint

_NEEDS = {"hf.py": "transformers"}
# the callback classes import their framework at module level (Lightning takes seconds); their examples are comments
# and tests/integrations/test_callbacks.py runs them, so doctest collection skips these modules
collect_ignore = ["hf_callback.py", "lightning_callback.py"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    module = _NEEDS.get(item.path.name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed ({install_hint('hf')})")

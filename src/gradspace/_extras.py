"""How to install an optional extra, in words that work today (gradspace is installed from a checkout, not PyPI)."""

from __future__ import annotations


def install_hint(extra: str) -> str:
    """The install command for ``gradspace[extra]`` that resolves before a release exists.

    Args:
        extra: an optional-dependency name of ``pyproject.toml`` (``"hf"``, ``"plot"``, ``"bench"``, ...).

    Examples:
        >>> install_hint("hf")
        'pip install -e ".[hf]" (from a gradspace checkout; gradspace is not on PyPI yet)'
    """
    return f'pip install -e ".[{extra}]" (from a gradspace checkout; gradspace is not on PyPI yet)'

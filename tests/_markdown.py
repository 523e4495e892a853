"""The ```python blocks of a Markdown file, for tests that run the documentation."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)


def python_blocks(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block of ``path`` (relative to the repository root), with
    the fence's indentation removed."""
    text = (ROOT / path).read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        indent = len(m.group("indent"))
        body = "".join(line[indent:] for line in m.group("body").splitlines(keepends=True))
        out.append((text.count("\n", 0, m.start()) + 1, body))
    return out

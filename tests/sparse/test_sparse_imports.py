"""``import gradspace.sparse`` / ``gradspace.intrinsic`` need only torch (optional dependencies load lazily)."""

from __future__ import annotations

import subprocess
import sys


def test_packages_import_without_optional_dependencies():
    code = ("import sys, gradspace.sparse, gradspace.intrinsic, gradspace.intrinsic.cli, gradspace.sparse.bench; "
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

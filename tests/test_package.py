"""The package as users meet it: the README's usage example runs, the license file is the one pyproject names.
(.ci/package_check runs the same example from a wheel installed into a fresh venv.)"""

from __future__ import annotations

import tomllib

import torch

from _markdown import ROOT, python_blocks


def test_readme_usage_example_runs(capsys):
    code = python_blocks("README.md")[0][1]
    assert "gradspace.GaLoreAdamW" in code  # the "swap AdamW" example is the first python block
    torch.manual_seed(0)
    scope: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)
    opt = scope["opt"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(opt.state_bytes()) and opt.state_bytes() > 0
    assert all(s["step"] == 3 for s in opt.state.values())


def test_license_is_apache_2_as_pyproject_says():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202  # the full text, not a notice

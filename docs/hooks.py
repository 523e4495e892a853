"""MkDocs hooks: generate the pages whose content must come from running code, not from typing.

* ``benchmarks.md`` — ``docs/gen_benchmarks.py`` reads the result files the benchmark commands wrote (never runs one);
* ``guide/mistakes.md`` — ``docs/gen_errors.py`` runs each common mistake and records gradspace's exact message.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.structure.files import File

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    page, images = _load("gen_benchmarks").render()
    files.append(File.generated(config, "benchmarks.md", content=page))
    for site, png in images.items():
        files.append(File.generated(config, site, abs_src_path=str(png)))
    files.append(File.generated(config, "guide/mistakes.md", content=_load("gen_errors").render()))
    return files

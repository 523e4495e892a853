"""Griffe extension: render the Sphinx roles of gradspace's docstrings (:func:`x`, :class:`~a.B`, :meth:`m` ...) as
mkdocs-autorefs cross references, so the docstrings stay as they are (readable in ``help()``) and the site shows
links instead of raw roles.

A role's target is resolved in the scope of the object whose docstring holds it (griffe's ``Object.resolve``: its
members, its parents', its module's imports), then against the package's top level; ``~`` shows only the last
component. The reference is *optional*: a target the site does not render shows as code, without a broken link.

Args entries that document several parameters at once (``a, b: text``) are split into one entry per name, which
griffe matches against the signature. It also adds the classes that a module builds on first access (``RUNTIME_CLASSES``) by run-time inspection, so the
API reference can show them.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|attr|data|mod|obj|exc|const|term):`(?P<tilde>~)?(?P<body>[^`]+?)`"
)
_EXPLICIT = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.S)


def _resolve(obj: griffe.Object, target: str, package: griffe.Object) -> str | None:
    name = target.strip().rstrip("()")
    first = name.split(".", 1)[0]
    if first == package.name:
        return name
    scopes = [obj] if obj.is_class or obj.is_module else [obj.parent or obj]
    scopes.append(package)
    for scope in scopes:
        try:
            head = scope.resolve(first)
        except Exception:  # griffe's NameResolutionError, or an alias that does not resolve
            continue
        return head + name[len(first):]
    return None


def rewrite(text: str, obj: griffe.Object, package: griffe.Object) -> str:
    """``text`` with every Sphinx role replaced by an optional autorefs reference (or inline code)."""

    def sub(m: re.Match) -> str:
        body = m.group("body")
        explicit = _EXPLICIT.match(body)
        title, target = (explicit.group("title"), explicit.group("target")) if explicit else (None, body)
        if title is None:
            title = target.rsplit(".", 1)[-1] if m.group("tilde") else target
        code = f"<code>{html.escape(title.strip())}</code>"
        identifier = _resolve(obj, target, package)
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    return ROLE.sub(sub, text)


_COMBINED = re.compile(r"^(?P<indent>\s*)(?P<names>[*\w]+(?:\s*,\s*[*\w]+)+):(?P<rest>\s.*|)$")
_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$")


def split_combined_params(text: str) -> str:
    """Google-style ``a, b: text`` entries of an Args section as one entry per name (``b: as `a`.``), which griffe's
    parser matches against the signature."""
    lines, out, in_args, i = text.splitlines(), [], False, 0
    while i < len(lines):
        line = lines[i]
        if _SECTION.match(line):
            in_args = True
        elif in_args and line.strip() and not line.startswith((" ", "\t")):
            in_args = False
        m = _COMBINED.match(line) if in_args else None
        if m is None:
            out.append(line)
            i += 1
            continue
        indent, names = m.group("indent"), [n.strip() for n in m.group("names").split(",")]
        block = [f"{indent}{names[0]}:{m.group('rest')}"]
        i += 1
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            block.append(lines[i])
            i += 1
        out += block + [f"{indent}{name}: as `{names[0].lstrip('*')}`." for name in names[1:]]
    return "\n".join(out)


def _walk(obj: griffe.Object, package: griffe.Object, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if obj.docstring is not None and ":" in obj.docstring.value:
        obj.docstring.value = split_combined_params(rewrite(obj.docstring.value, obj, package))
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, package, seen)


#: public classes a module builds on first access (they subclass an optional framework's class), which static
#: analysis cannot see: inspected at run time when the framework is installed
RUNTIME_CLASSES = {"gradspace.integrations.hf": ("GradspaceTrainer",)}


def _add_runtime_classes(pkg: griffe.Module) -> None:
    import importlib

    for module_name, names in RUNTIME_CLASSES.items():
        if not module_name.startswith(pkg.name + "."):
            continue
        try:
            module = importlib.import_module(module_name)
            for name in names:
                getattr(module, name)  # builds the class and caches it in the module's globals
            inspected = griffe.inspect(module_name)
        except Exception:  # the optional framework is not installed: the page shows what static analysis finds
            continue
        target = pkg.get_member(module_name[len(pkg.name) + 1:])
        for name in names:
            if name not in target.members and name in inspected.members:
                target.set_member(name, inspected.members[name])


class SphinxRoles(griffe.Extension):
    """Rewrite the roles once the whole package is loaded (so names resolve across modules)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _add_runtime_classes(pkg)
        _walk(pkg, pkg, set())

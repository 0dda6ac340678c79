"""Griffe extension: the Sphinx roles of mmrad's docstrings (``:func:`load_image```, ``:class:`~mmrad.x.Y```) as
mkdocstrings cross-references.

A role whose target resolves to a public object of ``mmrad`` becomes a link (every public object is rendered:
``show_if_no_docstring`` in mkdocs.yml); relative names are tried against the object's class and module, as Sphinx
does. Any other target stays inline code, so that a role never shows as raw text and never makes a broken link.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([\w.]+)`")


def _public(obj) -> bool:
    try:
        if obj.is_alias:
            obj = obj.final_target
    except Exception:  # an alias to an object outside the package
        return False
    return not any(part.startswith("_") for part in obj.path.split("."))


def _resolve(pkg: griffe.Module, context: griffe.Object, name: str) -> str | None:
    scopes = []
    scope = context
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    for prefix in [*scopes, ""]:
        path = f"{prefix}.{name}" if prefix else name
        if not path.startswith(pkg.path + ".") and path != pkg.path:
            continue
        try:
            target = pkg.modules_collection.get_member(path) if hasattr(pkg, "modules_collection") else None
            target = target or pkg.get_member(path.removeprefix(pkg.path + "."))
        except Exception:
            continue
        if target is not None and _public(target):
            return target.final_target.path if target.is_alias else target.path
    return None


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        def visit(obj) -> None:
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(lambda m: self._replace(pkg, obj, m), obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)

    @staticmethod
    def _replace(pkg, obj, match: re.Match) -> str:
        short, name = match.group(1), match.group(2)
        shown = name.rsplit(".", 1)[-1] if short else name
        target = _resolve(pkg, obj, name)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

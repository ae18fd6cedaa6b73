"""The shape of service/ and kernels/, read with `ast` (nothing is imported): private names stay inside their
package, the routing core knows no transport, modules stay under the size that tells where a seam belongs, and
the packages depend in one direction (the core never reaches up into the server, the replay or the CLI).

Each failure lists every offender as `path:line: what [rule]`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"service": "messplus.service", "kernels": "messplus.kernels"}  # folder -> the package it installs as
MAX_LINES = 400
NO_TRANSPORT = ("service/routing/", "service/errors.py")  # raise domain errors; know nothing of gRPC
TRANSPORT = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "messplus.v1")
CORE = ("service/routing/", "service/state/", "service/zoo/", "service/encoder/")
UPPER = ("messplus.service.server", "messplus.service.replay", "messplus.service.cli")


@dataclass(frozen=True)
class Module:
    path: str  # relative to the repository root, with forward slashes
    name: str  # the dotted name it is imported as
    package: str  # the package it belongs to (itself, for an __init__)
    tree: ast.Module
    lines: int


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute: relative imports resolved against the importing package
    name: str | None  # the name taken from `module` (from-imports), None for `import module`


@cache
def modules() -> tuple[Module, ...]:
    out = []
    for folder, dotted in SOURCES.items():
        for file in sorted((ROOT / folder).rglob("*.py")):
            parts = list(file.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([dotted, *(parts[:-1] if is_package else parts)])
            text = file.read_text(encoding="utf-8")
            out.append(Module(file.relative_to(ROOT).as_posix(), name, name if is_package else name.rpartition(".")[0],
                              ast.parse(text, filename=str(file)), len(text.splitlines())))
    return tuple(out)


def packages() -> set[str]:
    return {m.name for m in modules() if m.path.endswith("__init__.py")}


def imports(mod: Module) -> Iterator[Import]:
    """Every import of `mod`, at any depth (functions and TYPE_CHECKING blocks too: a dependency is a dependency)."""
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            yield from (Import(node.lineno, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = mod.package.split(".")[: len(mod.package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield from (Import(node.lineno, base, alias.name) for alias in node.names)


def targets(imp: Import) -> tuple[str, ...]:
    """The modules an import may bind: `from a import b` can be module a or submodule a.b."""
    return (imp.module, f"{imp.module}.{imp.name}") if imp.name else (imp.module,)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def report(rule: str, found: list[str]) -> str:
    return f"{len(found)} violation(s) of the rule: {rule}\n" + "\n".join(found)


def test_no_module_imports_a_private_name_from_another_package() -> None:
    rule = "no private name (leading underscore, module or attribute) is imported from another package"
    pkgs = packages()
    found = []
    for mod in modules():
        for imp in imports(mod):
            home = imp.module if imp.module in pkgs else imp.module.rpartition(".")[0]
            if home == mod.package:
                continue  # a package's own private modules and names are its business
            names = imp.module.split(".") + ([imp.name] if imp.name else [])
            for bad in filter(private, names):
                found.append(f"{mod.path}:{imp.line}: imports private {bad!r} from {imp.module} "
                             f"(package {mod.package} is not {home}) [{rule}]")
    assert not found, report(rule, found)


def test_the_routing_core_imports_no_grpc_and_no_generated_protos() -> None:
    rule = f"{', '.join(NO_TRANSPORT)} import neither gRPC nor the generated protos ({', '.join(TRANSPORT)})"
    found = [f"{mod.path}:{imp.line}: imports {target} [{rule}]"
             for mod in modules() if mod.path.startswith(NO_TRANSPORT)
             for imp in imports(mod) for target in targets(imp)
             if within(target, TRANSPORT)]
    assert not found, report(rule, found)


def test_no_module_is_over_the_size_limit() -> None:
    rule = f"a module of service/ or kernels/ has at most {MAX_LINES} lines; a longer one is telling you a seam"
    found = [f"{mod.path}:{MAX_LINES + 1}: {mod.lines} lines [{rule}]" for mod in modules() if mod.lines > MAX_LINES]
    assert not found, report(rule, found)


def test_packages_depend_in_one_direction() -> None:
    rule = f"{', '.join(CORE)} never import {', '.join(UPPER)}"
    found = [f"{mod.path}:{imp.line}: imports {target} [{rule}]"
             for mod in modules() if mod.path.startswith(CORE)
             for imp in imports(mod) for target in targets(imp) if within(target, UPPER)]
    assert not found, report(rule, found)


def test_the_checks_see_the_tree() -> None:
    """Guards the guards: the scan finds the packages, and resolves relative imports to real modules."""
    names = {m.name for m in modules()}
    assert {"messplus.service.routing.router", "messplus.service.server.guard", "messplus.kernels"} <= names
    guard = next(m for m in modules() if m.path == "service/server/guard.py")
    assert Import(0, "messplus.service.errors", "Overloaded") in {Import(0, i.module, i.name) for i in imports(guard)}
    assert len(modules()) > 20

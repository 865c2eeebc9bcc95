"""The axes side by side (README, "Development"): sources, builders, registries, environments and
targets each import shared modules only, never another axis, and a target is its own file plus
its line in the targets' registry.

Read from the source with `ast`, importing nothing of the package. Every import counts: at
module level, inside a function, under TYPE_CHECKING. A failure names each offending import as
`file:line -> module`.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "prefect_launch"
AXES = ("sources", "builders", "registries", "environments", "targets")


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line} -> {self.module}"


@cache
def module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def axis_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in AXES else None


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """The package's modules `module` imports, anywhere in it; importing a subpackage's module runs
    its `__init__` too (the package root's only import is lazy, in `__getattr__`)."""
    modules = module_files()
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package.rsplit('.', node.level - 1)[0]}.{base}".rstrip(".")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `from package import name`: a name, not a module
                name = name.rpartition(".")[0]
            while name and name != PACKAGE:
                found.append(Import(path, node.lineno, name))
                name = name.rpartition(".")[0]
    return tuple(dict.fromkeys(imp for imp in found if imp.module != module))


def test_no_axis_imports_another_axis():
    crossings: dict[tuple[Path, int], Import] = {}  # one per import statement: the module it names
    for module in module_files():
        for imp in imports_of(module) if axis_of(module) else ():
            if axis_of(imp.module) not in (None, axis_of(module)):
                crossings.setdefault((imp.file, imp.line), imp)
    assert not crossings, "an axis imports another axis:\n" + "\n".join(map(str, crossings.values()))


def chain_to_an_axis(start: Import) -> list[Import] | None:
    """The imports that lead from a shared module an axis imports (`start`) to any axis, or None."""
    came_from: dict[str, list[Import]] = {start.module: [start]}
    todo = deque([start.module])
    while todo:
        chain = came_from[todo.popleft()]
        for imp in imports_of(chain[-1].module):
            if imp.module in came_from:
                continue
            came_from[imp.module] = chain + [imp]
            if axis_of(imp.module):
                return came_from[imp.module]
            todo.append(imp.module)
    return None


def test_no_chain_of_imports_leads_from_an_axis_to_an_axis():
    """Through shared modules either: such a chain is an axis depending on another in disguise, or
    an import cycle (sources -> spec -> sources)."""
    shared: dict[str, Import] = {}  # each shared module an axis imports, by the first import of it
    for module in module_files():
        for imp in imports_of(module) if axis_of(module) else ():
            if not axis_of(imp.module):
                shared.setdefault(imp.module, imp)
    chains = [chain for imp in shared.values() if (chain := chain_to_an_axis(imp))]
    assert not chains, "a shared module an axis imports leads to an axis:\n" + "\n".join(
        "\n  ".join(map(str, chain)) for chain in chains
    )


def test_every_target_class_is_in_the_targets_registry():
    """Adding a target is its own file and its entry in `targets/__init__.py`'s `_TARGETS`."""
    folder = ROOT / PACKAGE / "targets"
    bases = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                bases[node.name] = (path, [base.id for base in node.bases if isinstance(base, ast.Name)])

    def is_target(name: str) -> bool:
        return name == "Target" or any(is_target(base) for base in bases.get(name, (None, []))[1])

    targets = {name: path for name, (path, _) in bases.items() if name != "Target" and is_target(name)}
    registry = next(
        node.value
        for node in ast.parse((folder / "__init__.py").read_text()).body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_TARGETS"
    )
    registered = {node.id for node in ast.walk(registry) if isinstance(node, ast.Name)}
    assert targets, "no target class found in targets/"
    missing = [f"{path.relative_to(ROOT)}: {name}" for name, path in targets.items() if name not in registered]
    assert not missing, "target classes missing from targets/__init__.py's _TARGETS:\n" + "\n".join(missing)

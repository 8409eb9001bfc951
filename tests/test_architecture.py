"""The module map of docs/architecture.md, enforced: every import inside cnnlab (top-level or
inside a function) goes to a module of the same layer or a lower one, and none forms a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# The layers of docs/architecture.md, lowest first. A module not named takes its package's.
LAYERS: list[set[str]] = [
    {"cnnlab", "errors", "files", "stats"},
    {"spec", "data", "device", "augment", "models", "reference", "muon"},
    {"recipe", "parts"},
    {"runs", "checkpoint", "loggers", "report", "report.figures", "report.document"},
    {"inference", "explain"},
    {"train"},
    {"export", "serve", "serve_guard", "bench", "reproduce", "report.tables", "report.verdicts",
     "report.study", "report.search", "report.learned"},
    {"sweep", "cli_common"},
    {"commands"},
    {"cli"},
]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC / "cnnlab").with_suffix("").parts)
    return name.removesuffix(".__init__").removesuffix("__init__") or "cnnlab"


def layer_of(name: str) -> int:
    while True:
        for level, names in enumerate(LAYERS):
            if name in names:
                return level
        if "." not in name:
            raise AssertionError(f"cnnlab.{name} has no layer in tests/test_architecture.py")
        name = name.rsplit(".", 1)[0]


def imports_of(path: Path) -> set[str]:
    """The cnnlab modules `path` imports, by name relative to the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab"):
            base = node.module.removeprefix("cnnlab").removeprefix(".") or "cnnlab"
            for alias in node.names:  # `from cnnlab import recipe` names a module
                sub = f"{base}.{alias.name}" if base != "cnnlab" else alias.name
                is_module = (SRC / "cnnlab" / f"{sub.replace('.', '/')}.py").exists() or (
                    SRC / "cnnlab" / sub.replace(".", "/")).is_dir()
                found.add(sub if is_module else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("cnnlab.") for a in node.names
                      if a.name.startswith("cnnlab")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) - {module_name(p)}
            for p in (SRC / "cnnlab").rglob("*.py")}


def test_every_import_goes_to_the_same_layer_or_below() -> None:
    upward = [f"cnnlab.{mod} imports cnnlab.{dep}" for mod, deps in graph().items()
              for dep in deps if layer_of(dep) > layer_of(mod)]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> None:
        assert mod not in path, "import cycle: " + " -> ".join(path[path.index(mod):] + [mod])
        if mod in done:
            return
        for dep in edges.get(mod, ()):
            visit(dep, [*path, mod])
        done.add(mod)

    for mod in edges:
        visit(mod, [])


def test_nothing_imports_the_command_line() -> None:
    assert [mod for mod, deps in graph().items() if "cli" in deps] == []

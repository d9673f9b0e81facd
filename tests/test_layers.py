"""The import layers of docs/architecture.md, checked on every import in vbatch/ (those inside
functions too): vbatch modules import only downwards, vllm and torch only in engines/vllm/, heavy
libraries lazily, and vbatch modules at the top of a file where a reader sees them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vbatch"

#: Each layer and the layers it may import (itself included: modules of one folder work together).
MAY_IMPORT = {
    "base": {"base"},
    "config": {"base", "config"},
    "core": {"base", "core"},
    "storage": {"base", "core", "storage"},
    "engines": {"base", "core", "config", "engines"},
    "services": {"base", "core", "config", "storage", "engines", "services"},
    "client": {"base", "core", "config", "storage", "services", "client"},
    "cli": {"base", "config", "services", "client", "cli"},
}
#: Modules outside the folders: the package itself (its version), errors, paths, processes.
BASE_MODULES = {"vbatch", "vbatch.errors", "vbatch.paths", "vbatch.processes"}
#: Only engines/vllm/ may import these at all.
VLLM_ONLY = {"vllm", "torch"}
#: Slow to import (seconds) or large: never at the top of a module, so `vbatch --help` and the
#: pure core stay fast.
HEAVY = {"vllm", "torch", "transformers", "tokenizers", "pyarrow", "matplotlib", "numpy", "openai_harmony", "openai"}
#: Outside engines/vllm/, torch only where vbatch fabricates its built-in tiny model (`tiny:llama`,
#: resolved by config/profiles.py when a profile names it), inside the function that builds it.
TORCH_TOO = {"vbatch.config.tinymodel"}
#: The one place vbatch modules are imported inside a function: the CLI's lazy command map.
LAZY_COMMAND_MAP = "vbatch.cli"
#: The package's one upward import: `from vbatch import Batch` loads the helper library from a
#: module-level __getattr__, so `import vbatch` stays light.
LAZY_EXPORTS = {"vbatch": {"vbatch.client.batch"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module in BASE_MODULES:
        return "base"
    if module == "vbatch.__main__":
        return "cli"
    folder = module.split(".")[1]
    assert folder in MAY_IMPORT, f"{module} is in no layer: add its folder to docs/architecture.md and this test"
    return folder


def imports(path: Path):
    """(imported module, line, at top level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                # `from vbatch.x import y` may name a module y: count the deepest module that exists
                candidate = f"{base}.{alias.name}"
                yield (candidate if _is_module(candidate) else base), node.lineno, id(node) in top


def _is_module(name: str) -> bool:
    if not name.startswith("vbatch."):
        return False
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _in_type_checking(path: Path) -> set[int]:
    """Lines under `if TYPE_CHECKING:` (annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_go_down_only(path: Path):
    here = module_name(path)
    layer = layer_of(here)
    typing_only = _in_type_checking(path)
    problems = []
    for target, line, at_top in imports(path):
        root = target.split(".")[0]
        if root == "vbatch":
            if target in LAZY_EXPORTS.get(here, ()):
                continue
            there = layer_of(target if _is_module(target) or target in BASE_MODULES else target.rpartition(".")[0])
            if there not in MAY_IMPORT[layer]:
                problems.append(f"line {line}: {layer} module imports {target} ({there})")
            if (
                not at_top
                and line not in typing_only
                and not here.startswith(LAZY_COMMAND_MAP + ".__init__")
                and here != LAZY_COMMAND_MAP
            ):
                problems.append(f"line {line}: vbatch import {target} inside a function; put it at the top")
        elif (
            root in VLLM_ONLY
            and not here.startswith("vbatch.engines.vllm")
            and not (root == "torch" and here in TORCH_TOO and not at_top)
        ):
            problems.append(f"line {line}: imports {target} outside vbatch/engines/vllm/")
        elif root in HEAVY and at_top:
            problems.append(f"line {line}: heavy {target} imported at the top; import it where it is used")
    assert not problems, f"{here}:\n" + "\n".join(problems)


def test_no_test_module_imports_another():
    """Shared test code lives in tests/support/, so a test module can be read (and run) alone."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            offenders += [f"{path.name} imports {name}" for name in names if name.split(".")[0].startswith("test_")]
    assert not offenders, offenders
